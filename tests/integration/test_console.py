"""The console over a real broker, through HTTP (Starlette's test client): who sees what.

The security properties get negative tests: a wrong role cannot sign in, another tenant's entry
is NotFound, a POST without its CSRF token is refused, an expired session is signed out, a
compliance officer cannot place a hold, and the token never appears in a page.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from broker.audit.checkpoint import open_checkpoint
from broker.audit.merkle import leaf_hash, verify_inclusion
from broker.audit.note import Verifier
from tests.integration.console_harness import MODEL, World, invoke, start_world
from tests.integration.harness import FakeBackend


@pytest.fixture
def world(tmp_path: Path, backend: FakeBackend) -> Iterator[World]:
    world = start_world(tmp_path, backend)
    yield world
    world.stop()


def sign_in(client: httpx.Client, token: str) -> httpx.Client:
    page = client.get("/login")
    nonce = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert nonce is not None
    answer = client.post(
        "/login", data={"token": token, "login_csrf": nonce.group(1)}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(client: httpx.Client, path: str = "/retention") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found is not None
    return found.group(1)


def test_sign_in_sets_a_strict_cookie_and_never_renders_the_token(world: World) -> None:
    token = world.broker.token("acme", "compliance", subject="olga")
    client = world.client()
    page = client.get("/login")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert "script-src 'self';" in page.headers["content-security-policy"]
    nonce = re.search(r'name="login_csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    answer = client.post(
        "/login", data={"token": token, "login_csrf": nonce}, follow_redirects=False
    )
    cookie = answer.headers["set-cookie"]
    assert "console_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    entries = client.get("/entries")
    assert entries.status_code == 200
    assert "olga @ acme" in entries.text
    for path in ("/entries", "/charts", "/retention"):
        assert token not in client.get(path).text
        assert client.get(path).headers["cache-control"] == "no-store"


def test_sign_in_refuses_other_roles_bad_tokens_and_forged_forms(world: World) -> None:
    client = world.client()
    page = client.get("/login")
    for token in (
        world.broker.token("acme", "buyer"),
        world.broker.token("acme", "auditor"),
        "x.y.z",
    ):
        nonce = re.search(r'name="login_csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        page = client.post("/login", data={"token": token, "login_csrf": nonce})
        assert page.status_code == 401
        assert "console_session" not in client.cookies
    # A form posted from elsewhere has no matching login cookie.
    fresh = world.client()
    token = world.broker.token("acme", "compliance")
    answer = fresh.post("/login", data={"token": token, "login_csrf": "guess"})
    assert answer.status_code == 403
    assert fresh.get("/entries", follow_redirects=False).headers["location"] == "/login"


def test_compliance_sees_only_its_tenant(world: World) -> None:
    client = sign_in((world.client()), world.broker.token("acme", "compliance"))
    bank_leaf = world.leaf_of(world.bank_calls[0], "call.intent")
    acme_leaf = world.leaf_of(world.acme_calls[0], "call.intent")
    page = client.get("/entries?kind=call.intent")
    assert f'href="/entries/{acme_leaf}"' in page.text
    assert f'href="/entries/{bank_leaf}"' not in page.text
    assert client.get("/entries?tenant=bank").status_code == 403
    other = client.get(f"/entries/{bank_leaf}")
    assert other.status_code == 404  # exactly as a missing entry
    assert client.get("/entries/999999").status_code == 404
    assert client.get(f"/entries/{bank_leaf}/proof.json").status_code == 404


def test_admin_sees_every_tenant_and_search_filters_and_links(world: World) -> None:
    client = sign_in((world.client()), world.broker.token("ops", "admin"))
    bank_leaf = world.leaf_of(world.bank_calls[0], "call.intent")
    page = client.get("/entries?tenant=bank&kind=call.intent")
    assert f'href="/entries/{bank_leaf}"' in page.text
    assert "<td>acme</td>" not in page.text
    assert "<td>bank</td>" in page.text
    labelled = client.get("/entries?label=pii.email&tenant=acme&size=25")
    assert labelled.text.count('class="entry-link"') == 2
    redacted = client.get("/entries?action=tokenize")
    assert redacted.status_code == 200
    assert client.get("/entries?from=not-a-date").status_code == 400
    assert client.get("/entries?size=7").status_code == 400
    # the sort links keep the filters, so a sorted search is still a shareable URL
    assert "tenant=bank" in re.search(r'href="\?([^"]*sort=-?time[^"]*)"', page.text).group(1)  # type: ignore[union-attr]


def test_policy_revision_filter_selects_exactly_its_entries(world: World) -> None:
    client = sign_in((world.client()), world.broker.token("ops", "admin"))
    leaf = world.leaf_of(world.acme_calls[0], "call.intent")
    body = orjson.loads(
        re.search(
            r'<pre class="mono" id="entry-json">(.*?)</pre>',
            client.get(f"/entries/{leaf}").text,
            re.S,
        )
        .group(1)
        .replace("&#34;", '"')
    )  # type: ignore[union-attr]
    revision = body["policy_revision"]
    hits = client.get(f"/entries?revision={revision}&kind=call.intent&size=250")
    assert hits.text.count('class="entry-link"') == 3
    assert client.get("/entries?revision=nope&size=250").text.count('class="entry-link"') == 0
    assert client.get("/entries?revision=bad%20rev").status_code == 400


def test_viewing_an_entry_is_audited_and_shows_its_decisions(world: World) -> None:
    client = sign_in((world.client()), world.broker.token("acme", "compliance", subject="olga"))
    leaf = world.leaf_of(world.acme_calls[0], "call.intent")
    page = client.get(f"/entries/{leaf}")
    assert page.status_code == 200
    assert "/customer/email" in page.text
    assert "pii.email" in page.text
    assert "example.com" not in page.text  # entries hold commitments, never values
    outcome_leaf = world.leaf_of(world.acme_calls[0], "call.outcome")
    outcome = client.get(f"/entries/{outcome_leaf}")
    assert outcome.text.count("state-retained") == 2  # request and answer, kept by the policy
    views = client.get("/entries?kind=admin.audit.viewed&size=250")
    assert views.text.count('class="entry-link"') >= 2
    assert "acme/olga" in views.text


def test_proof_json_verifies_against_the_signed_checkpoint(world: World) -> None:
    client = sign_in((world.client()), world.broker.token("acme", "compliance"))
    leaf = world.leaf_of(world.acme_calls[1], "call.outcome")
    proof = client.get(f"/entries/{leaf}/proof.json").json()
    checkpoint, signers = open_checkpoint(proof["checkpoint"], [Verifier.from_vkey(proof["vkey"])])
    assert signers
    entry = base64.b64decode(proof["entry"])
    verify_inclusion(
        leaf_hash(entry),
        proof["leaf_index"],
        checkpoint.size,
        [base64.b64decode(h) for h in proof["hashes"]],
        checkpoint.root_hash,
    )


def test_holds_need_admin_a_reason_and_the_csrf_token(world: World) -> None:
    record = world.retained[0]
    compliance = sign_in((world.client()), world.broker.token("acme", "compliance"))
    refused = compliance.post(
        "/retention/hold",
        data={"record_id": record, "reason": "case 1", "csrf": csrf_of(compliance)},
    )
    assert refused.status_code == 403
    admin = sign_in((world.client()), world.broker.token("ops", "admin", subject="ada"))
    assert (
        admin.post("/retention/hold", data={"record_id": record, "reason": "case 1"}).status_code
        == 403
    )
    assert (
        admin.post(
            "/retention/hold", data={"record_id": record, "reason": "case 1", "csrf": "wrong"}
        ).status_code
        == 403
    )
    csrf = csrf_of(admin)
    assert (
        admin.post(
            "/retention/hold", data={"record_id": record, "reason": " ", "csrf": csrf}
        ).status_code
        == 400
    )
    done = admin.post(
        "/retention/hold", data={"record_id": record, "reason": "case 1", "csrf": csrf}
    )
    assert done.status_code == 200
    assert "hold recorded" in done.text
    assert "state-held" in done.text
    held = admin.get("/entries?kind=admin.retention.held")
    assert held.text.count('class="entry-link"') == 1
    assert "ops/ada" in held.text


def test_an_expired_session_signs_out(world: World) -> None:
    now = [1_000.0]
    client = sign_in(
        (world.client(clock=lambda: now[0] + __import__("time").time() - 1_000.0, ttl=60)),
        world.broker.token("acme", "compliance"),
    )
    assert client.get("/entries").status_code == 200
    now[0] += 61
    gone = client.get("/entries", follow_redirects=False)
    assert gone.status_code == 303
    assert gone.headers["location"] == "/login"


def test_sign_out_needs_the_csrf_token_and_ends_the_session(world: World) -> None:
    client = sign_in((world.client()), world.broker.token("acme", "compliance"))
    assert client.post("/logout", data={}).status_code == 403
    assert client.get("/entries").status_code == 200
    csrf = csrf_of(client, "/entries")
    client.post("/logout", data={"csrf": csrf}, follow_redirects=False)
    assert client.get("/entries", follow_redirects=False).status_code == 303


def test_export_of_the_current_search(world: World) -> None:
    client = sign_in((world.client()), world.broker.token("acme", "compliance"))
    csv = client.get("/export?format=csv&kind=call.outcome")
    assert csv.status_code == 200
    assert csv.headers["content-disposition"].startswith("attachment;")
    assert len(csv.text.strip().split("\n")) == 3  # the header, then the two outcomes of acme
    jsonl = client.get("/export?format=jsonl&kind=call.outcome")
    lines = jsonl.text.strip().split("\n")
    assert len(lines) == 3  # the manifest, then the two outcomes of acme
    ocsf = client.get("/export?format=ocsf&kind=call.outcome")
    assert ocsf.headers["content-disposition"].endswith('.ocsf.jsonl"')
    events = [json.loads(line) for line in ocsf.text.strip().split("\n")]
    assert len(events) == 2 and {e["class_uid"] for e in events} == {6003}  # API Activity
    assert all(e["actor"]["user"]["org"]["name"] == "acme" for e in events)  # its own tenant
    assert client.get("/export?format=xml").status_code == 400
    assert client.get("/export?format=csv&tenant=bank").status_code == 403


def test_chart_data_counts_the_search(world: World) -> None:
    client = sign_in((world.client()), world.broker.token("ops", "admin"))
    data = client.get("/charts/data.json").json()
    outcomes = data["calls_by_outcome"]
    assert sum(sum(s["values"]) for s in outcomes["series"]) == 4
    assert {s["name"] for s in outcomes["series"]} == {"OK", "PERMISSION_DENIED"}
    assert sum(data["calls_by_tenant_model"]["values"]) == 4
    assert sum(data["denials_by_reason"]["values"]) == 1
    labels = data["actions_by_label"]["labels"]
    assert "pii.email" in labels
    due = next(s for s in data["deletions"]["series"] if s["name"] == "due")
    assert sum(due["values"]) == len(world.retained)
    assert client.get("/charts").status_code == 200


def test_a_canary_planted_in_a_call_appears_in_no_page_and_no_response(world: World) -> None:
    canary = f"canary{uuid.uuid4().hex}@example.com"  # a value the pii.email field carries
    payload = orjson.dumps({"customer": {"email": canary}, "note": f"note {canary}"})
    reply = invoke(world.broker, "acme", payload)
    intent_leaf = world.leaf_of(reply.call_id, "call.intent")
    outcome_leaf = world.leaf_of(reply.call_id, "call.outcome")
    officer = sign_in(world.client(), world.broker.token("acme", "compliance"))
    admin = sign_in(world.client(), world.broker.token("ops", "admin"))
    seen: list[str] = []
    for client, tenant in ((officer, ""), (admin, "&tenant=acme")):
        for path in (
            "/",
            f"/entries?size=100{tenant}",
            f"/entries?size=100&sort=-leaf{tenant}",
            f"/entries?size=100&sort=-time{tenant}",
            f"/entries?call_id={reply.call_id}{tenant}",
            f"/entries/{intent_leaf}",
            f"/entries/{outcome_leaf}",
            f"/entries/{outcome_leaf}/proof.json",
            f"/charts?x=1{tenant}",
            f"/charts/data.json?x=1{tenant}",
            f"/export?format=jsonl{tenant}",
            f"/export?format=csv{tenant}",
            f"/export?format=ocsf{tenant}",
            "/retention?tenant=acme",
        ):
            answer = client.get(path)
            assert answer.status_code == 200, path
            seen.append(path)
            assert canary not in answer.text, f"the canary is in {path}"
            assert canary not in str(answer.headers), f"the canary is in {path}'s headers"
    assert len(seen) == 28


def _leaves(page: httpx.Response) -> list[int]:
    return [int(n) for n in re.findall(r'class="entry-link" href="/entries/(\d+)"', page.text)]


def test_sorting_newest_first_runs_across_pages(world: World) -> None:
    for n in range(10):  # two entries each: more than one page of 25
        invoke(world.broker, "acme", b'{"customer": {"email": "s@example.com"}, "note": "%d"}' % n)
    client = sign_in(world.client(), world.broker.token("ops", "admin"))
    everything = _leaves(client.get("/entries?size=250"))
    assert len(everything) > 25 and everything == sorted(everything)
    # The sort link of the # column, from the first page, asks the broker to order.
    first = client.get("/entries?size=25")
    link = re.search(r'href="\?([^"]*sort=-leaf[^"]*)"', first.text)
    assert link is not None
    newest: list[int] = []
    page = client.get(f"/entries?{link.group(1).replace('&amp;', '&')}")
    while True:
        assert "Sorted across every page" in page.text
        newest.extend(_leaves(page))
        following = re.search(r'id="next-page" href="\?([^"]+)"', page.text)
        if following is None:
            break
        page = client.get(f"/entries?{following.group(1).replace('&amp;', '&')}")
    assert newest == sorted(everything, reverse=True)
    # Time order, oldest first, across pages too (ties broken by leaf index).
    by_time = _leaves(client.get("/entries?size=250&sort=time"))
    assert sorted(by_time) == everything
    # A page token made in one order is refused in another (the page says what to do).
    token = re.search(r'id="next-page" href="\?[^"]*page=([^"&]+)', first.text)
    assert token is not None
    refused = client.get(f"/entries?size=25&sort=-leaf&page={token.group(1)}")
    assert refused.status_code == 400
    assert "other filters or order" in refused.text


def test_an_unknown_query_order_is_invalid_argument(world: World) -> None:
    import grpc  # noqa: PLC0415

    from broker._proto.broker.v1 import audit_pb2, audit_pb2_grpc  # noqa: PLC0415

    token = world.broker.token("ops", "admin")
    with world.broker.channel() as channel:
        stub = audit_pb2_grpc.AuditStub(channel)
        md = (("authorization", f"Bearer {token}"),)
        newest = list(
            stub.QueryEntries(
                audit_pb2.QueryEntriesRequest(
                    page_size=3, order=audit_pb2.QUERY_ORDER_NEWEST_FIRST
                ),
                metadata=md,
                timeout=10,
            )
        )
        leaves = [e.leaf_index for e in newest]
        assert leaves == sorted(leaves, reverse=True) and len(leaves) == 3
        with pytest.raises(grpc.RpcError) as caught:
            list(
                stub.QueryEntries(
                    audit_pb2.QueryEntriesRequest(order=99),  # type: ignore[arg-type]
                    metadata=md,
                    timeout=10,
                )
            )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "order 99 is unknown" in caught.value.details()  # type: ignore[attr-defined]


def test_the_decisions_table_counts_the_entities_inside_each_field(world: World) -> None:
    note = "write to first@example.com, second@example.org or third@example.net"
    payload = orjson.dumps({"customer": {"email": "e@example.com"}, "note": note})
    call_id = invoke(world.broker, "acme", payload).call_id
    client = sign_in(world.client(), world.broker.token("acme", "compliance"))
    leaf = world.leaf_of(call_id, "call.intent")
    page = client.get(f"/entries/{leaf}")
    assert page.status_code == 200
    # The entry itself records the count, as a number next to the label and action.
    entry = client.get(f"/entries/{leaf}/proof.json").json()
    rows = orjson.loads(base64.b64decode(entry["entry"]))["fields"]
    note_entities = [r for r in rows if r["path"] == "/note" and r["action"].startswith("entity.")]
    assert [(r["labels"], r["count"]) for r in note_entities] == [(["pii.email"], 3)]
    decisions = re.search(r'<table class="grid" id="decisions">.*?</table>', page.text, re.S)
    assert decisions is not None
    note_row = re.search(r'<td class="mono">/note</td>.*?</tr>', decisions.group(0), re.S)
    assert note_row is not None
    assert "pii.email \N{MULTIPLICATION SIGN} 3" in note_row.group(0)
    total = sum(
        r["count"]
        for r in rows
        if r["action"].startswith("entity.") and r["labels"] == ["pii.email"]
    )
    assert total >= 3
    assert re.search(
        rf'id="entity-counts".*?pii\.email</td><td>\w+</td><td>{total}<', page.text, re.S
    )
    for value in ("first@", "second@", "third@", "e@example.com"):
        assert value not in page.text
        assert value.encode() not in base64.b64decode(entry["entry"])


def test_chart_counts_are_tenant_scoped_by_the_broker(world: World) -> None:
    import grpc  # noqa: PLC0415

    from broker._proto.broker.v1 import audit_pb2, audit_pb2_grpc  # noqa: PLC0415

    client = sign_in(world.client(), world.broker.token("acme", "compliance"))
    data = client.get("/charts/data.json").json()
    assert data["calls_by_tenant_model"]["labels"] == ["acme \N{MIDDLE DOT} " + MODEL]
    assert data["calls_by_tenant_model"]["values"] == [2]
    assert data["denials_by_reason"] == {"labels": [], "values": []}  # globex's denial
    due = next(s for s in data["deletions"]["series"] if s["name"] == "due")
    assert sum(due["values"]) == len(world.retained)  # every retained record is acme's
    with world.broker.channel() as channel:
        stub = audit_pb2_grpc.AuditStub(channel)
        for token, code in (
            (world.broker.token("acme", "compliance"), grpc.StatusCode.PERMISSION_DENIED),
            (world.broker.token("bank", "buyer"), grpc.StatusCode.PERMISSION_DENIED),
            ("not-a-token", grpc.StatusCode.UNAUTHENTICATED),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                stub.Aggregate(
                    audit_pb2.AggregateRequest(filter=audit_pb2.AuditFilter(tenant="bank")),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=10,
                )
            assert caught.value.code() is code  # type: ignore[attr-defined]


def test_a_pinned_log_key_is_what_verify_checks_against(world: World) -> None:
    from broker.audit.merkle import VerificationError  # noqa: PLC0415
    from broker.audit.note import Signer  # noqa: PLC0415

    token = world.broker.token("acme", "compliance")
    leaf = world.leaf_of(world.acme_calls[1], "call.outcome")
    served = sign_in(world.client(), token).get(f"/entries/{leaf}/proof.json").json()
    assert (served["vkey_source"], served["broker_vkey_matches"]) == ("broker", True)
    # Pinned to the log's real key: the proof verifies against the pinned key.
    pinned = sign_in(world.client(pinned_vkey=served["vkey"]), token)
    proof = pinned.get(f"/entries/{leaf}/proof.json").json()
    assert (proof["vkey_source"], proof["broker_vkey_matches"]) == ("pinned", True)
    _, signers = open_checkpoint(proof["checkpoint"], [Verifier.from_vkey(proof["vkey"])])
    assert signers
    # Pinned to another key (the broker's is not the published one): verification fails.
    other = Signer.generate(world.broker.config.audit.origin).verifier().to_vkey()
    wary = sign_in(world.client(pinned_vkey=other), token)
    proof = wary.get(f"/entries/{leaf}/proof.json").json()
    assert proof["vkey"] == other and proof["broker_vkey_matches"] is False
    with pytest.raises(VerificationError):
        open_checkpoint(proof["checkpoint"], [Verifier.from_vkey(proof["vkey"])])
