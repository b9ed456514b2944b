// crictl-lite: a small subset of crictl for the lab's Kind node image, written for this lab
// because sigs.k8s.io/cri-tools is not served by the module proxy reachable here.
// Subcommands (output shaped like crictl's where kind parses it):
//
//	crictl inspecti IMAGE   JSON {"status": {"id", "repoTags", "repoDigests", "size"}}
//	crictl images           table IMAGE TAG IMAGE-ID SIZE
//	crictl ps [-a]          table CONTAINER IMAGE CREATED STATE NAME POD
//	crictl pods             table POD-ID STATE NAME NAMESPACE
//	crictl logs CONTAINER   prints the container's CRI log file
//	crictl version
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	remote "k8s.io/cri-client/pkg"
	"k8s.io/klog/v2"
)

const endpoint = "unix:///run/containerd/containerd.sock"

func die(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "crictl-lite: "+format+"\n", a...)
	os.Exit(1)
}

func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 13 {
		return id[:13]
	}
	return id
}

func main() {
	args := os.Args[1:]
	// Ignore global flags such as --runtime-endpoint (only containerd is supported).
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		if !strings.Contains(args[0], "=") && len(args) > 1 {
			args = args[1:]
		}
		args = args[1:]
	}
	if len(args) == 0 {
		die("usage: crictl inspecti|images|ps|pods|logs|version")
	}
	logger := klog.Background()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tw := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
	defer tw.Flush()

	switch args[0] {
	case "version":
		rs, err := remote.NewRemoteRuntimeService(endpoint, 10*time.Second, nil, &logger)
		if err != nil {
			die("%v", err)
		}
		v, err := rs.Version(ctx, "v1")
		if err != nil {
			die("%v", err)
		}
		fmt.Printf("Version:  0.1.0 (crictl-lite)\nRuntimeName:  %s\nRuntimeVersion:  %s\nRuntimeApiVersion:  %s\n",
			v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)
	case "inspecti", "images", "image", "img":
		is, err := remote.NewRemoteImageService(endpoint, 10*time.Second, nil, &logger)
		if err != nil {
			die("%v", err)
		}
		if args[0] == "inspecti" {
			if len(args) < 2 {
				die("inspecti needs an image")
			}
			resp, err := is.ImageStatus(ctx, &runtimeapi.ImageSpec{Image: args[1]}, false)
			if err != nil {
				die("%v", err)
			}
			if resp.GetImage() == nil {
				die("no such image %q present", args[1])
			}
			img := resp.GetImage()
			out := map[string]any{"status": map[string]any{
				"id": img.Id, "repoTags": img.RepoTags, "repoDigests": img.RepoDigests,
				"size": fmt.Sprint(img.Size_), "pinned": img.Pinned,
			}}
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			_ = enc.Encode(out)
			return
		}
		imgs, err := is.ListImages(ctx, nil)
		if err != nil {
			die("%v", err)
		}
		fmt.Fprintln(tw, "IMAGE\tTAG\tIMAGE ID\tSIZE")
		for _, img := range imgs {
			for _, t := range img.RepoTags {
				i := strings.LastIndex(t, ":")
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.1fMB\n", t[:i], t[i+1:], short(img.Id), float64(img.Size_)/1e6)
			}
		}
	case "ps", "pods", "logs":
		rs, err := remote.NewRemoteRuntimeService(endpoint, 10*time.Second, nil, &logger)
		if err != nil {
			die("%v", err)
		}
		switch args[0] {
		case "ps":
			all := len(args) > 1 && (args[1] == "-a" || args[1] == "--all")
			var filter *runtimeapi.ContainerFilter
			if !all {
				filter = &runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}
			}
			cs, err := rs.ListContainers(ctx, filter)
			if err != nil {
				die("%v", err)
			}
			fmt.Fprintln(tw, "CONTAINER\tIMAGE\tCREATED\tSTATE\tNAME\tATTEMPT\tPOD ID\tPOD")
			for _, c := range cs {
				age := time.Since(time.Unix(0, c.CreatedAt)).Round(time.Second)
				fmt.Fprintf(tw, "%s\t%s\t%s ago\t%s\t%s\t%d\t%s\t%s\n", short(c.Id), c.Image.GetImage(), age,
					strings.TrimPrefix(c.State.String(), "CONTAINER_"), c.Metadata.GetName(), c.Metadata.GetAttempt(),
					short(c.PodSandboxId), c.Labels["io.kubernetes.pod.name"])
			}
		case "pods":
			ps, err := rs.ListPodSandbox(ctx, nil)
			if err != nil {
				die("%v", err)
			}
			fmt.Fprintln(tw, "POD ID\tCREATED\tSTATE\tNAME\tNAMESPACE")
			for _, p := range ps {
				age := time.Since(time.Unix(0, p.CreatedAt)).Round(time.Second)
				fmt.Fprintf(tw, "%s\t%s ago\t%s\t%s\t%s\n", short(p.Id), age,
					strings.TrimPrefix(p.State.String(), "SANDBOX_"), p.Metadata.GetName(), p.Metadata.GetNamespace())
			}
		case "logs":
			if len(args) < 2 {
				die("logs needs a container id")
			}
			id := args[len(args)-1]
			cs, err := rs.ListContainers(ctx, nil)
			if err != nil {
				die("%v", err)
			}
			for _, c := range cs {
				if strings.HasPrefix(c.Id, id) {
					id = c.Id
					break
				}
			}
			st, err := rs.ContainerStatus(ctx, id, false)
			if err != nil {
				die("%v", err)
			}
			data, err := os.ReadFile(st.GetStatus().GetLogPath())
			if err != nil {
				die("%v", err)
			}
			os.Stdout.Write(data)
		}
	default:
		die("unsupported subcommand %q (crictl-lite supports inspecti, images, ps, pods, logs, version)", args[0])
	}
}
