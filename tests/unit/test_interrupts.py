"""SIGTERM becomes Interrupted once; inside shield() signals are only noted."""

from __future__ import annotations

import os
import signal

import pytest

from upgate.core.interrupts import Interrupted, SignalGuard


def test_sigterm_raises_interrupted_once():
    with SignalGuard() as guard:
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
        assert caught.value.name == "SIGTERM" and str(caught.value) == "interrupted by SIGTERM"
        os.kill(os.getpid(), signal.SIGINT)  # a second signal is noted, never raised again
    assert guard.received == ["SIGTERM", "SIGINT"]


def test_shield_notes_signals_without_raising():
    with SignalGuard() as guard:
        with guard.shield():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGHUP)
        assert guard.received == ["SIGTERM", "SIGHUP"] and not guard.raised
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)


def test_handlers_are_restored_on_exit():
    before = signal.getsignal(signal.SIGTERM)
    with SignalGuard():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


def test_interrupted_is_not_swallowed_by_except_exception():
    with SignalGuard(), pytest.raises(Interrupted):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        except Exception:  # what a careless handler on the way would do
            pytest.fail("Interrupted was caught by `except Exception`")
