"""Write the seed corpora under ``corpus/<harness>/``: ``python -m tests.fuzz.make_seeds``.

Seeds are small, meaningful inputs: valid payloads and requests, real event streams, the public
transparency-log vectors, receipts and exports of a real audit log signed with the harnesses'
test key, a valid manifest and package, the demo config. Files are named by the SHA-1 of their
content, as libFuzzer names corpus entries, so regenerating is idempotent. Vectors are read from
``shared/vectors/transparency-log`` (searched upward from here), as ``tests/vectors`` does.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import random
import struct
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jwt
from google.protobuf import struct_pb2

from broker._proto.broker.v1 import broker_pb2
from broker._proto.inference.v2 import grpc_predict_v2_pb2 as pb
from tests.fuzz.harnesses import _audit
from tests.fuzz.harnesses import jwt_bearer as jwt_harness
from tests.fuzz.harnesses._streams import CIPHERTEXTS, TOKENS
from tests.fuzz.runner import CORPUS, ROOT
from tests.unit.classify import corpus as entities


def _write(harness: str, seeds: Iterable[bytes]) -> int:
    folder = CORPUS / harness
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for seed in seeds:
        (folder / hashlib.sha1(seed, usedforsecurity=False).hexdigest()).write_bytes(seed)
        count += 1
    return count


def _vectors_dir() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "vectors" / "transparency-log"
        if candidate.is_dir():
            return candidate
    return None


def _j(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


PAYLOADS: list[Any] = [
    {"a": 1},
    {"customer": {"email": "ada@example.com", "phone": "+44 20 7946 0958"}, "note": "hi"},
    {"items": [{"note": "card 4111 1111 1111 1111"}, {"note": "iban DE89370400440532013000"}]},
    {"n": 12345678901234567890123, "f": 1e308, "neg": -0.0, "t": True, "z": None, "e": [], "o": {}},
    {"k/with~slash*": {"": "empty key"}, "ip": "10.0.0.1 and ::1"},
    {"deep": json.loads("[" * 63 + "1" + "]" * 63)},
    {"ssn": "123-45-6789", "cn": "11010519491231002X", "num": 4111111111111111},
]


def payload_json() -> Iterator[bytes]:
    for payload in PAYLOADS:
        yield _j(payload)
    yield _j(PAYLOADS[1]) + b"\x00" + _j({"/customer": ["pii"], "/items/*/note": ["free_text"]})
    yield b'{"a":1,"a":2,"b":"\\ud83d\\ude00","c":"\\u0000"}'
    yield b'{"a":' + b"[" * 65 + b"]" * 65 + b"}"
    yield b'{"s":"caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87"}'


def invoke_request() -> Iterator[bytes]:
    for payload in PAYLOADS:
        request = broker_pb2.InvokeRequest(model="acme/m@1", json=_j(payload), purpose="support")
        yield request.SerializeToString()
        request = broker_pb2.InvokeRequest(model="acme/m@1")
        request.struct.update(payload)
        request.labels["/customer"].labels.append("pii")
        request.labels["/items/*/note"].labels.extend(["free_text", "x.y:z"])
        yield request.SerializeToString()
    unset = broker_pb2.InvokeRequest(model="acme/m@1")
    unset.struct.fields["v"].CopyFrom(struct_pb2.Value())
    yield unset.SerializeToString()


def detectors() -> Iterator[bytes]:
    rng = random.Random(7)
    makers = [getattr(entities, name) for name in dir(entities) if name.startswith("make_")]
    texts = [f"Contact: {maker(rng)}, thanks." for maker in makers]
    texts.append("请联系 " + entities.make_cn_id(rng) + " 或 " + entities.make_phone(rng))
    for choice, text in itertools.product(range(12), texts):
        if choice == 11 or choice < 10:
            yield bytes([choice]) + text.encode("utf-8", "surrogatepass")
    yield b"\xff" + " ".join(texts).encode()


def oip_request() -> Iterator[bytes]:
    yield b"0\x00" + _j({"features": [5.1, 3.5, 1.4, 0.2]})
    yield b"0\x00" + _j({"features": [[5.1, 3.5, 1.4, 0.2]]})
    yield b"01\x00" + _j(
        {
            "a": 1,
            "b": [2],
            "c/d": 3,
            "texts": ["x", "y\u00e9"],
            "flags": [[True, False], [False, True]],
            "m": [[0, 1], [254, 255]],
        }
    )
    yield b"012\x00" + _j({"x": [0.5, 1e300], "i": -128, "u": 18446744073709551615})
    mapping = {
        "inputs": [
            {"name": "a", "datatype": "INT32", "shape": [-1, 2], "path": "/rows"},
            {"name": "b", "datatype": "FP32", "shape": [2], "paths": ["/p/0", "/p/1"]},
        ],
        "outputs": [{"name": "y", "path": "/out", "squeeze": True}, {"name": "z"}],
    }
    yield _j(mapping) + b"\x00" + _j({"rows": [[1, 2], [3, 4]], "p": [1.5, 2.5]})
    collide = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "path": "/x"}],
        "outputs": [{"name": "a", "path": "/o"}, {"name": "b", "path": "/o/p"}],
    }
    yield _j(collide) + b"\x00" + _j({"x": 1.0})


def _out(name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    return pb.ModelInferResponse.InferOutputTensor(
        name=name, datatype=datatype, shape=shape, contents=pb.InferTensorContents(**contents)
    )


def oip_response() -> Iterator[bytes]:
    typed = [
        _out("y", "FP32", [1, 3], fp32_contents=[0.1, 0.7, 0.2]),
        _out("probabilities", "FP64", [1], fp64_contents=[0.5]),
        _out("label", "BYTES", [2], bytes_contents=[b"setosa", b"\xff\xfe"]),
        _out("ints", "INT64", [2, 2, 1], int64_contents=[1, -2, 3, -4]),
        _out("flags", "BOOL", [0, 3]),
        _out("u", "UINT64", [1], uint64_contents=[2**64 - 1]),
    ]
    for choice in range(3):
        response = pb.ModelInferResponse(model_name="m", id="r", outputs=typed)
        yield bytes([choice]) + response.SerializeToString()
    raw = pb.ModelInferResponse(
        model_name="m",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(name="y", datatype="FP16", shape=[2]),
            pb.ModelInferResponse.InferOutputTensor(name="label", datatype="BYTES", shape=[1]),
            pb.ModelInferResponse.InferOutputTensor(
                name="probabilities", datatype="INT8", shape=[]
            ),
        ],
        raw_output_contents=[
            struct.pack("<2e", 1.5, -2.0),
            struct.pack("<I", 5) + b"hello",
            struct.pack("<b", -3),
        ],
    )
    for choice in range(3):
        yield bytes([choice]) + raw.SerializeToString()


def _event(data: Any) -> bytes:
    return b"data: " + _j(data) + b"\n\n"


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return _event({"id": "c1", "object": "chat.completion.chunk", "choices": [choice], **extra})


def _streams() -> Iterator[bytes]:
    token, cipher = next(iter(TOKENS)), next(iter(CIPHERTEXTS))
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    yield (
        _chunk({"role": "assistant", "content": ""})
        + _chunk({"content": f"Hello {token[:10]}"})
        + _chunk({"content": f"{token[10:]}, mail ada@example.com {cipher}"})
        + _chunk({}, "stop")
        + _event({"id": "c1", "choices": [], "usage": usage})
        + b"data: [DONE]\n\n"
    )
    yield (
        b": keep-alive\r\n\r\nevent: message\r\nid: 1\r\ndata: "
        + _j({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
        + b"\r\n\r\n"
        + _chunk({}, "length")
    )
    calls = [{"index": 0, "id": "t1", "type": "function", "function": {"name": "f"}}]
    yield (
        _chunk({"tool_calls": calls})
        + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"card": "4111'}}]})
        + _chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' 1111 1111 1111"}'}}]})
        + _chunk({}, "tool_calls")
        + b"data: [DONE]\n\n"
    )
    yield _chunk({"content": "partial"}) + b'data: {"choices": [\n'
    yield b'event: error\ndata: {"error": {"message": "overloaded"}}\n\n'
    yield _event({"error": {"message": "x"}}) + _event([1, 2])


def openai_stream() -> Iterator[bytes]:
    for stream in _streams():
        yield b"\x00" + stream
        yield b"\x03\x01\x07\x00" + stream


def stream_restore() -> Iterator[bytes]:
    token = next(iter(TOKENS))
    texts = [
        f"Dear {token}, your card 4111 1111 1111 1111 is on file.",
        f"{next(iter(CIPHERTEXTS))} and enc:v1:k1:Zm9vX (not issued) and enc:v1:",
        "Call +1 202-555-0143 or mail ada@example.com; IP 192.168.0.1! TKN-",
        "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\nok",
    ]
    for text in texts:
        yield b"\x00" + text.encode()
        yield b"\x02\x01\x05" + text.encode()


def audit_note() -> Iterator[bytes]:
    for vector in _note_vectors():
        if isinstance(vector.get("note"), str):
            yield b"\x00" + vector["note"].encode()
        for vkey in vector.get("vkeys", []):
            yield b"\x01" + vkey.encode()
        if isinstance(vector.get("skey"), str):
            yield b"\x02" + vector["skey"].encode()
    yield b"\x02" + _audit.FUZZ_SKEY.encode()


def audit_checkpoint() -> Iterator[bytes]:
    for vector in _note_vectors():
        note = vector.get("note")
        if isinstance(note, str) and "go.sum database tree" in note:
            yield b"\x01" + note.encode()
            yield b"\x00" + note.split("\n\n")[0].encode() + b"\n"
    log = _audit_log_files()
    for receipt in log["receipts"][:2]:
        yield b"\x02" + receipt["checkpoint"].encode()


def _note_vectors() -> list[dict[str, Any]]:
    folder = _vectors_dir()
    if folder is None:
        return []
    vectors: list[dict[str, Any]] = json.loads((folder / "signed_note_vectors.json").read_text())[
        "vectors"
    ]
    return vectors


def audit_proof() -> Iterator[bytes]:
    folder = _vectors_dir()
    if folder is None:
        return
    for probe in json.loads((folder / "merkle_inclusion_probes.json").read_text())["vectors"]:
        yield _proof_input(
            0,
            probe["leaf_index"],
            probe["tree_size"],
            probe["leaf_hash"],
            probe["root"],
            probe["proof"],
        )
    for probe in json.loads((folder / "merkle_consistency_probes.json").read_text())["vectors"]:
        yield _proof_input(
            1, probe["size1"], probe["size2"], probe["root1"], probe["root2"], probe["proof"]
        )


def _proof_input(mode: int, a: int, b: int, h1: str, h2: str, proof: list[str]) -> bytes:
    def hash32(text: str) -> bytes:
        return bytes.fromhex(text).ljust(32, b"\x00")[:32]

    head = bytes([mode]) + (a % 2**64).to_bytes(8, "big") + (b % 2**64).to_bytes(8, "big")
    return head + hash32(h1) + hash32(h2) + b"".join(bytes.fromhex(p) for p in proof)


_LOG_CACHE: dict[str, Any] = {}


def _audit_log_files() -> dict[str, Any]:
    """Receipts and export bundles of a 6-entry log signed with the fuzz key (made once)."""
    if _LOG_CACHE:
        return _LOG_CACHE
    from broker.audit.export import (  # noqa: PLC0415
        build_export,
        build_receipts,
        csv_chunks,
        jsonl_chunks,
    )
    from broker.audit.keys import TenantKeys  # noqa: PLC0415
    from broker.audit.query import AuditFilter  # noqa: PLC0415
    from broker.audit.writer import AuditLog  # noqa: PLC0415
    from broker.storage.db import create_engine_for, migrate  # noqa: PLC0415
    from tests.unit.audit.conftest import make_intent  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine_for(f"sqlite:///{tmp}/audit.db")
        migrate(engine)
        ticks = itertools.count(1_700_000_000)
        log = AuditLog(
            engine,
            signer=_audit.FUZZ_SIGNER,
            origin=_audit.FUZZ_ORIGIN,
            tenant_keys=TenantKeys(bytes(range(32))),
            clock=lambda: next(ticks),
        )
        log.start()
        try:
            for i in range(3):
                log.append(make_intent(tenant="acme", call_id=f"call-{i}", time_us=i))
            log.checkpoint_now()
            for i in range(3, 6):
                log.append(make_intent(tenant="globex", call_id=f"call-{i}", time_us=i))
            log.checkpoint_now()
            receipts = build_receipts(log.store, engine, AuditFilter())
            exports = []
            for flt in (AuditFilter(), AuditFilter(tenant="acme")):
                manifest, items = build_export(engine, log.store, log.verifier, flt)
                items = list(items)
                exports.append(
                    (
                        b"".join(jsonl_chunks(manifest, items)),
                        _j(manifest.to_json()),
                        b"".join(csv_chunks(items)),
                    )
                )
        finally:
            log.close()
            engine.dispose()
    _LOG_CACHE.update(receipts=receipts, exports=exports)
    return _LOG_CACHE


def audit_receipt() -> Iterator[bytes]:
    receipts = _audit_log_files()["receipts"]
    yield _j(receipts[0])
    yield _j(receipts[:3])
    yield b"\n".join(_j(r) for r in receipts[3:]) + b"\n"


def audit_export() -> Iterator[bytes]:
    for jsonl, manifest, csv in _audit_log_files()["exports"]:
        yield b"\x00" + jsonl
        yield b"\x01" + manifest + b"\x00" + csv


def jwt_bearer() -> Iterator[bytes]:
    now = jwt_harness.NOW
    claims = {
        "iss": jwt_harness.HS_ISSUER,
        "aud": "model-broker",
        "sub": "svc",
        "tenant": "acme",
        "exp": now + 3600,
        "nbf": now - 10,
        "iat": now - 10,
        "roles": ["buyer", "auditor"],
    }
    hs = jwt.encode(claims, jwt_harness.HS_SECRET, algorithm="HS256")
    ed = jwt.encode(
        {**claims, "iss": jwt_harness.ED_ISSUER, "roles": "buyer seller"},
        jwt_harness.ED_KEY,
        algorithm="EdDSA",
        headers={"kid": "ed-1", "typ": "application/at+jwt"},
    )
    for token in (hs, ed):
        yield b"\x00Bearer " + token.encode()
        yield b"\x01bearer " + token.encode()
    yield b"\x00Bearer eyJhbGciOiJub25lIn0.eyJpc3MiOiJ4In0."
    yield b"\x00Basic dXNlcjpwYXNz"


def _manifest() -> dict[str, Any]:
    return {
        "name": "iris-sklearn",
        "version": "1.0.0",
        "entry_point": "iris_model:predict",
        "requirements": ["scikit-learn>=1.3", "numpy[extra] >= 1.26, < 3"],
        "prepare": "iris_model:train",
        "resources": {"memory_mb": 1024, "cpu_seconds_per_call": 5, "concurrency": 2},
        "files": ["iris_model.py", "data/iris.csv"],
    }


def package_manifest() -> Iterator[bytes]:
    yield _j(_manifest())
    for path in sorted((ROOT / "examples" / "models").glob("*/manifest.json")):
        yield path.read_bytes()


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            info.mtime = 0
            archive.addfile(info, io.BytesIO(body))
    return out.getvalue()


def package_archive() -> Iterator[bytes]:
    import gzip  # noqa: PLC0415

    package = _tar(
        {
            "manifest.json": _j(_manifest()),
            "iris_model.py": b"def predict(x):\n    return x\n",
            "data/iris.csv": b"5.1,3.5,1.4,0.2,setosa\n",
        }
    )
    yield b"\x00" + package
    yield b"\x01" + gzip.compress(package, mtime=0)


def config_file() -> Iterator[bytes]:
    demo = (ROOT / "examples" / "demo" / "broker.toml").read_bytes()
    yield demo
    yield demo + b"\x00LIMITS__MAX_DEPTH=32\nSERVER__PORT=0\nAUTH__LEEWAY_SECONDS=1.5"
    yield b'data_dir = "var"\n[limits]\nmax_payload_bytes = 1024\n\x00LOGGING__LEVEL="debug"'


SEEDS = {
    "payload_json": payload_json,
    "invoke_request": invoke_request,
    "detectors": detectors,
    "oip_request": oip_request,
    "oip_response": oip_response,
    "openai_stream": openai_stream,
    "stream_restore": stream_restore,
    "audit_note": audit_note,
    "audit_checkpoint": audit_checkpoint,
    "audit_proof": audit_proof,
    "audit_receipt": audit_receipt,
    "audit_export": audit_export,
    "jwt_bearer": jwt_bearer,
    "package_manifest": package_manifest,
    "package_archive": package_archive,
    "config_file": config_file,
}


def main() -> None:
    """Write every harness's seeds."""
    for harness, make in SEEDS.items():
        print(f"{harness}: {_write(harness, make())} seeds")


if __name__ == "__main__":
    main()
