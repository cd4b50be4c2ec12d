"""What the pool hands out and how keys and accounts are named (leases.py): a key's id is a short
hash that every process computes alike and that gives nothing of the key away, a lease never
shows its key when printed or logged, and long accounts are shortened for logs and pages."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys

from core.errors import Reason
from siliconflow.leases import Acquired, Lease, Taken, key_id, mask_account
from tests.conftest import ROOT

KEY = "sk-secretsecretsecret-0001"


def test_a_key_is_named_by_a_short_hash_that_gives_nothing_away():
    name = key_id(KEY)
    assert len(name) == 16 and int(name, 16) >= 0
    assert "secret" not in name and name == hashlib.sha256(KEY.encode()).hexdigest()[:16]
    assert key_id(KEY) == name and key_id(KEY + "x") != name  # one name per key, another for another


def test_every_process_names_a_key_alike():
    """Processes and instances share dead keys and budgets by this name: it must not depend on the
    process (no salt, no hash() randomisation)."""
    other = subprocess.run(
        [sys.executable, "-c", f"from siliconflow.leases import key_id; print(key_id({KEY!r}))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert other.stdout.strip() == key_id(KEY)


def test_a_lease_printed_or_logged_never_shows_its_key(caplog):
    lease = Lease(KEY, "Kwai-Kolors/Kolors", "1000:1", probing=True)
    shown = [repr(lease), str(lease), repr(Acquired(lease, 3.0)), repr(Taken(lease)), repr(Taken(None, Reason.of("cancelled")))]
    with caplog.at_level(logging.INFO):
        logging.getLogger("test.leases").info("handed out %s", lease)
    assert not any("secret" in text for text in [*shown, caplog.text])
    assert "Kwai-Kolors/Kolors" in shown[0] and "probing=True" in shown[0]  # what it is for still shows


def test_long_accounts_are_shortened_and_short_ones_shown_whole():
    assert [mask_account(name) for name in ("A", "team-1", "acct-1234567", "key-0123456789abcdef")] == [
        "A",
        "team-1",
        "acc…567",
        "key…def",
    ]
