"""The console in a real browser: Debian's Chromium driven by Playwright, over a real broker.

One walk through what an officer does: sign in, search, open an entry, verify its proof in the
browser (and see a tampered proof and a tampered checkpoint rejected), view the charts, place
a legal hold. The in-browser verifier (``static/verify.js``) also runs every inclusion and
signed-note vector of ``shared/vectors/transparency-log`` inside the page, through WebCrypto.
Each page is screenshotted under the broker's data dir (``console-screenshots/``).

Chromium comes from Debian (``make system-deps``), never from Playwright's own download. Outside
CI, without ``/usr/bin/chromium``, the test skips with that reason; in CI it fails instead.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import skip_or_fail
from tests.integration.console_harness import World, start_world
from tests.integration.harness import FakeBackend

CHROMIUM = Path("/usr/bin/chromium")


def _vectors_dir() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "vectors" / "transparency-log"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture
def world(tmp_path: Path, backend: FakeBackend) -> Iterator[World]:
    world = start_world(tmp_path, backend)
    yield world
    world.stop()


@pytest.fixture
def page(world: World) -> Iterator[Any]:
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM}: run `make system-deps` (Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        # chromium_sandbox=False: CI runs as root, where Chromium's own sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), chromium_sandbox=False)
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20_000)
        yield page
        context.close()
        browser.close()


def _shot(page: Any, world: World, name: str) -> Path:
    directory = world.broker.config.data_dir / "console-screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_an_officer_walks_through_the_console(world: World, page: Any) -> None:
    console = world.serve()
    base = console.url.rstrip("/")
    csp_violations: list[str] = []
    page.on(
        "console",
        lambda msg: (
            csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None
        ),
    )
    shots = []

    # Sign in (admin, so that the hold at the end is allowed).
    page.goto(f"{base}/entries")
    assert page.url.endswith("/login")
    page.fill("#token", world.broker.token("ops", "admin", subject="ada"))
    shots.append(_shot(page, world, "01-sign-in"))
    page.click("#sign-in")
    page.wait_for_url(f"{base}/entries")
    assert "ada @ ops" in page.inner_text("#who")

    # Search: acme's entries with a pii.email field; the URL is shareable.
    page.fill("input[name=tenant]", "acme")
    page.fill("input[name=label]", "pii.email")
    page.click("#search-button")
    page.wait_for_url(re.compile(r"label=pii\.email"))
    assert "tenant=acme" in page.url
    assert page.locator("a.entry-link").count() == 2
    shots.append(_shot(page, world, "02-search"))

    # Open an entry: its decisions, digests and records are on the page.
    page.locator("a.entry-link").first.click()
    page.wait_for_url(re.compile(r"/entries/\d+$"))
    decisions = page.inner_text("#decisions")
    assert "/customer/email" in decisions
    assert "pii.email" in decisions
    assert "example.com" not in page.content()

    # Verify in the browser: the proof leads to the checkpoint the log key signed.
    page.click("#verify")
    page.wait_for_selector("#verify-result.ok")
    assert "Verified" in page.inner_text("#verify-result")
    assert page.inner_text("#verify-signer").startswith(world.broker.config.audit.origin)
    shots.append(_shot(page, world, "03-entry-verified"))

    # A tampered entry (served by a lying console) must be rejected...
    def tamper_entry(route: Any) -> None:
        proof = route.fetch().json()
        entry = base64.b64decode(proof["entry"]).replace(b'"acme"', b'"acmf"')
        proof["entry"] = base64.b64encode(entry).decode()
        route.fulfill(json=proof)

    page.route("**/proof.json", tamper_entry)
    page.click("#verify")
    page.wait_for_selector("#verify-result.bad")
    assert "does not lead to the checkpoint" in page.inner_text("#verify-result")
    shots.append(_shot(page, world, "04-entry-tampered"))
    page.unroute("**/proof.json")

    # ...and so must a checkpoint whose signed text was changed.
    def tamper_checkpoint(route: Any) -> None:
        proof = route.fetch().json()
        origin, size, rest = proof["checkpoint"].split("\n", 2)
        proof["checkpoint"] = f"{origin}\n{int(size) + 1}\n{rest}"
        proof["tree_size"] += 1
        route.fulfill(json=proof)

    page.route("**/proof.json", tamper_checkpoint)
    page.click("#verify")
    page.wait_for_selector("#verify-result.bad")
    assert "does not verify" in page.inner_text("#verify-result")
    page.unroute("**/proof.json")

    # Charts of every tenant's calls.
    page.goto(f"{base}/charts")
    page.wait_for_selector("body[data-charts-ready=true]")
    assert "Based on" in page.inner_text("#chart-basis")
    assert page.locator("canvas").count() == 5
    shots.append(_shot(page, world, "05-charts"))

    # Place a legal hold on one of acme's retained records.
    record = world.retained[0]
    page.goto(f"{base}/retention?tenant=acme")
    page.fill("#hold-record", record)
    page.fill("#hold-reason", "matter 2026-17")
    page.click("#hold-button")
    page.wait_for_selector("#retention-message")
    assert "hold recorded" in page.inner_text("#retention-message")
    row = page.locator("#records tr", has_text=record)
    assert "held" in row.inner_text()
    assert "matter 2026-17" in page.inner_text("#retention-actions")
    shots.append(_shot(page, world, "06-retention-hold"))

    assert csp_violations == []
    assert len(shots) == 6


def test_the_browser_verifier_passes_the_transparency_log_vectors(world: World, page: Any) -> None:
    vectors = _vectors_dir()
    if vectors is None:
        skip_or_fail("shared/vectors/transparency-log is not in this checkout")
    assert vectors is not None
    inputs = {
        name: json.loads((vectors / name).read_text())
        for name in (
            "merkle_inclusion_probes.json",
            "rfc6962_reference_tree.json",
            "signed_note_vectors.json",
        )
    }
    console = world.serve()
    page.goto(f"{console.url}login")  # any page of the console: a secure context on 127.0.0.1
    result = page.evaluate(_RUN_VECTORS, inputs)
    assert result["failures"] == []
    assert result["counts"] == {"probes": 98, "reference": 5, "hasher": 3, "notes": 10}


# Runs in the page: import the console's own verify.js and check every vector against it.
_RUN_VECTORS = """
async (inputs) => {
  const v = await import('/static/verify.js');
  const failures = [];
  const counts = {probes: 0, reference: 0, hasher: 0, notes: 0};
  const hex = v.hexToBytes;
  async function fails(f) { try { await f(); return false; } catch (e) {
    if (!(e instanceof v.VerificationError)) throw e; return true; } }

  for (const p of inputs['merkle_inclusion_probes.json'].vectors) {
    counts.probes++;
    const failed = await fails(() => v.verifyInclusion(
      BigInt(p.leaf_index), BigInt(p.tree_size), hex(p.leaf_hash), p.proof.map(hex), hex(p.root)));
    if (failed !== p.want_error) failures.push('probe ' + p.file);
  }
  const tree = inputs['rfc6962_reference_tree.json'];
  for (const p of tree.inclusion_proofs) {
    counts.reference++;
    const leaf = hex(tree.node_hashes_by_level[0][p.leaf_index]);
    const root = hex(tree.root_by_tree_size[p.tree_size]);
    const proof = p.proof.map(hex);
    if (await fails(() => v.verifyInclusion(p.leaf_index, p.tree_size, leaf, proof, root)))
      failures.push('reference proof ' + p.leaf_index + '/' + p.tree_size);
  }
  for (const h of tree.hasher_vectors.leaf_hash) {
    counts.hasher++;
    if (v.bytesToHex(await v.leafHash(hex(h.input_hex))) !== h.want) failures.push('leaf hash');
  }
  counts.hasher++;
  if (v.bytesToHex(await v.sha256(new Uint8Array())) !== tree.hasher_vectors.empty_root)
    failures.push('empty root');

  for (const n of inputs['signed_note_vectors.json'].vectors) {
    if (!('note' in n)) continue;  // signing and formatting vectors: the Python side's
    counts.notes++;
    let opened = null;
    try {
      const keys = [];
      for (const k of n.vkeys) keys.push(await v.parseVkey(k));
      opened = await v.openNote(n.note, keys);
      if (n.checkpoint) {
        const cp = v.parseCheckpoint(opened.body);
        if (cp.origin !== n.origin || cp.size !== BigInt(n.want_size) ||
            v.bytesToHex(cp.root) !== n.want_root) failures.push('checkpoint ' + n.name);
      }
    } catch (e) {
      if (!(e instanceof v.VerificationError)) throw e;
      if (!n.want_error) failures.push('note ' + n.name + ': ' + e.message);
      continue;
    }
    if (n.want_error) failures.push('note accepted ' + n.name);
    else if (JSON.stringify(opened.verified) !== JSON.stringify(n.want_verified))
      failures.push('note signers ' + n.name + ': ' + opened.verified);
  }
  return {failures, counts};
}
"""


def test_verify_in_the_browser_uses_the_pinned_log_key(world: World, page: Any) -> None:
    from broker.audit.note import Signer  # noqa: PLC0415

    leaf = world.leaf_of(world.acme_calls[0], "call.outcome")
    real = world.broker.config.audit
    served = world.serve()
    token = world.broker.token("acme", "compliance", subject="olga")

    def verify_on(base: str) -> tuple[str, str]:
        page.context.clear_cookies()
        page.goto(f"{base}/login")
        page.fill("#token", token)
        page.click("#sign-in")
        page.wait_for_url(f"{base}/entries")
        page.goto(f"{base}/entries/{leaf}")
        page.click("#verify")
        page.wait_for_selector("#verify-result.ok, #verify-result.bad")
        return page.get_attribute("#verify-result", "class"), page.inner_text("#verify-result")

    # The key the broker serves: verified, and the page says where the key came from.
    classes, _ = verify_on(served.url.rstrip("/"))
    assert "ok" in classes
    assert "served by the broker" in page.inner_text("#verify-vkey-source")
    vkey = page.inner_text("#verify-vkey")
    # Pinned to that same key: verified, "pinned".
    classes, _ = verify_on(world.serve(pinned_vkey=vkey).url.rstrip("/"))
    assert "ok" in classes
    assert "pinned" in page.inner_text("#verify-vkey-source")
    # Pinned to a key that did not sign the log: the browser refuses the checkpoint.
    other = Signer.generate(real.origin).verifier().to_vkey()
    classes, text = verify_on(world.serve(pinned_vkey=other).url.rstrip("/"))
    assert "bad" in classes
    assert "NOT verified" in text
