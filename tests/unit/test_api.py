from __future__ import annotations

import kubetest_infra


def test_all_is_sorted_and_complete() -> None:
    names = kubetest_infra.__all__
    assert names == sorted(names)
    for name in names:
        assert hasattr(kubetest_infra, name), name


def test_every_error_has_a_hint_line() -> None:
    from kubetest_infra.errors import ConfigError

    assert str(ConfigError("what happened", hint="what to do")) == "what happened\nHint: what to do"
