"""``dmworker conversations`` (a real process) reads a Facebook Login account's conversations from
``/<page id>/conversations`` with its Page token, as the workers send from ``/<page id>/messages``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from dmworker.settings import token_fingerprint

IG = "17841400000000960"
PAGE = "1029384760"
PAGE_TOKEN = "EAAfacebookpagetokensecret0960"


def test_conversations_of_a_facebook_login_account_are_read_from_the_page(settings, sandbox, tmp_path):
    # Given a Facebook Login account (Page token) with one conversation in the sandbox
    sandbox.add_token(PAGE_TOKEN, IG, login="facebook", page_id=PAGE)
    sandbox.inbound(IG, "8003", "hello page")
    accounts = tmp_path / "accounts.json"
    accounts.write_text(json.dumps({IG: {"access_token": PAGE_TOKEN, "login": "facebook", "page_id": PAGE}}))
    accounts.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMWORKER_")}
    env.update(
        DMWORKER_REDIS_URL=settings.redis_url,
        DMWORKER_KEY_PREFIX=settings.key_prefix,
        DMWORKER_ACCOUNTS_FILE=str(accounts),
        DMWORKER_FACEBOOK_GRAPH_URL=sandbox.url + "/v24.0",
    )
    # When `dmworker conversations list` runs for it
    out = subprocess.run(
        [sys.executable, "-m", "dmworker.cli", "conversations", "list", "--account", IG],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it lists the conversation, read from the Page's path with the Page token
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 1
    reads = [(r["path"], r.get("token_fp")) for r in sandbox.requests(IG)]
    assert [p for p, _ in reads] == [f"/v24.0/{PAGE}/conversations"], reads
    assert [t for _, t in reads] == [token_fingerprint(PAGE_TOKEN)]
    assert PAGE_TOKEN not in out.stdout + out.stderr
