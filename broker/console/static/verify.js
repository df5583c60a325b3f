// In-browser verification of the broker's audit log proofs, with WebCrypto only.
//
// - RFC 6962 hashing: leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right).
// - RFC 9162 section 2.1.3.2: the root an inclusion proof leads to (indices as BigInt, since
//   tree sizes are uint64).
// - C2SP signed-note: "<body>\n" then "— <name> <base64(keyID || signature)>" lines; a
//   signature counts only when (name, key ID) match a trusted verifier key; a known key whose
//   signature fails rejects the note; unknown keys are ignored; no verified key rejects it.
//   Ed25519 (type 0x01) and cosignature/v1 (type 0x04, timestamped) keys are understood.
// - C2SP tlog-checkpoint: origin, size, base64 root hash lines.
//
// Every failure throws VerificationError. This mirrors broker/audit/{merkle,note,checkpoint}.py
// and is tested against shared/vectors/transparency-log in the console's browser test.

export class VerificationError extends Error {}

const SIG_ED25519 = 0x01;
const SIG_COSIGNATURE_V1 = 0x04;
const MAX_SIGNATURES = 100;
const enc = new TextEncoder();

function fail(message) {
  throw new VerificationError(message);
}

export function hexToBytes(hex) {
  if (hex.length % 2 !== 0 || !/^[0-9a-f]*$/.test(hex)) fail("not lowercase hex");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function bytesToB64(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

// Standard base64 with padding, canonical only (one value, one encoding), as the Python side.
export function b64Strict(text, what) {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4 !== 0) fail(`${what} is not valid base64`);
  let raw;
  try {
    raw = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  } catch {
    fail(`${what} is not valid base64`);
  }
  if (bytesToB64(raw) !== text) fail(`${what} is not canonical base64`);
  return raw;
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

export async function leafHash(entry) {
  return sha256(concat(Uint8Array.of(0), entry));
}

async function nodeHash(left, right) {
  return sha256(concat(Uint8Array.of(1), left, right));
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

// The root hash an inclusion proof leads to (RFC 9162 section 2.1.3.2).
export async function rootFromInclusionProof(index, size, leaf, proof) {
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  if (BigInt(index) >= BigInt(size)) fail(`leaf index ${index} is not below tree size ${size}`);
  if (leaf.length !== 32) fail("leaf hash must be 32 bytes");
  let r = leaf;
  for (const p of proof) {
    if (p.length !== 32) fail("proof hashes must be 32 bytes");
    if (sn === 0n) fail("proof is longer than the tree is deep");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) fail("proof is shorter than the tree is deep");
  return r;
}

export async function verifyInclusion(index, size, leaf, proof, root) {
  const computed = await rootFromInclusionProof(index, size, leaf, proof);
  if (!equal(computed, root)) fail(`inclusion proof of leaf ${index} does not lead to the checkpoint's root`);
}

function validKeyName(name) {
  return name.length > 0 && !name.includes("+") && !/[\s\x00-\x1f]/u.test(name);
}

async function keyId(name, type, publicKey) {
  const digest = await sha256(concat(enc.encode(name + "\n"), Uint8Array.of(type), publicKey));
  return ((digest[0] << 24) | (digest[1] << 16) | (digest[2] << 8) | digest[3]) >>> 0;
}

// Parse "<name>+<hex key ID>+<base64(type || key)>" and check that the ID matches.
export async function parseVkey(vkey) {
  const parts = vkey.split("+");
  if (parts.length < 3) fail("a verifier key has the form name+keyid+key");
  const [name, hexId] = parts;
  const b64 = parts.slice(2).join("+");
  if (!validKeyName(name)) fail("verifier key has an invalid name");
  if (!/^[0-9a-f]{8}$/.test(hexId)) fail("verifier key ID must be 8 lowercase hex digits");
  const raw = b64Strict(b64, "verifier key");
  if (raw.length !== 33 || (raw[0] !== SIG_ED25519 && raw[0] !== SIG_COSIGNATURE_V1)) {
    fail("verifier key is not an Ed25519 or cosignature/v1 key");
  }
  const id = parseInt(hexId, 16);
  if ((await keyId(name, raw[0], raw.slice(1))) !== id) fail(`verifier key ${name} has a key ID that does not match`);
  const key = await crypto.subtle.importKey("raw", raw.slice(1), { name: "Ed25519" }, false, ["verify"]);
  return { name, id, type: raw[0], key, vkey };
}

async function signatureVerifies(verifier, message, signature) {
  let signed = message;
  let sig = signature;
  if (verifier.type === SIG_COSIGNATURE_V1) {
    if (sig.length !== 72) return false;
    const view = new DataView(sig.buffer, sig.byteOffset, 8);
    const timestamp = view.getBigUint64(0);
    if (timestamp >= 1n << 63n) return false;
    signed = concat(enc.encode(`cosignature/v1\ntime ${timestamp}\n`), message);
    sig = sig.slice(8);
  } else if (sig.length !== 64) {
    return false;
  }
  return crypto.subtle.verify({ name: "Ed25519" }, verifier.key, sig, signed);
}

// Verify a signed note against trusted verifiers; return {body, verified: [names]}.
export async function openNote(text, verifiers) {
  if (typeof text !== "string") fail("note must be text");
  if (text.length > 1 << 20) fail("note is too large");
  if (/[\x00-\x09\x0b-\x1f]/.test(text)) fail("note contains a control character");
  const known = new Map(verifiers.map((v) => [`${v.name}\u0000${v.id}`, v]));
  const split = text.lastIndexOf("\n\n");
  if (split < 0) fail("note has no blank line before its signatures");
  const body = text.slice(0, split + 1);
  const block = text.slice(split + 2);
  if (!block.endsWith("\n")) fail("note signatures must end with a newline");
  const lines = block.slice(0, -1).split("\n");
  if (lines.length > MAX_SIGNATURES) fail("note has too many signatures");
  const message = enc.encode(body);
  const verified = [];
  for (const [n, line] of lines.entries()) {
    if (!line.startsWith("\u2014 ")) fail(`signature line ${n + 1} does not start with an em dash`);
    const rest = line.slice(2);
    const space = rest.indexOf(" ");
    const name = space < 0 ? rest : rest.slice(0, space);
    const b64 = space < 0 ? "" : rest.slice(space + 1);
    if (!validKeyName(name) || !b64) fail(`signature line ${n + 1} is malformed`);
    const raw = b64Strict(b64, `signature line ${n + 1}`);
    if (raw.length < 5) fail(`signature line ${n + 1} is too short`);
    const id = ((raw[0] << 24) | (raw[1] << 16) | (raw[2] << 8) | raw[3]) >>> 0;
    const verifier = known.get(`${name}\u0000${id}`);
    if (verifier === undefined) continue;
    if (!(await signatureVerifies(verifier, message, raw.slice(4)))) {
      fail(`signature by known key ${name} does not verify`);
    }
    if (!verified.includes(name)) verified.push(name);
  }
  if (verified.length === 0) fail("note has no valid signature from a known key");
  return { body, verified };
}

// Parse a checkpoint body (the text of an opened note).
export function parseCheckpoint(body) {
  if (!body.endsWith("\n")) fail("checkpoint must end with a newline");
  const lines = body.slice(0, -1).split("\n");
  if (lines.length < 3) fail("checkpoint needs origin, size and root hash lines");
  const [origin, sizeText, rootText] = lines;
  if (!/^(0|[1-9][0-9]{0,19})$/.test(sizeText) || BigInt(sizeText) >= 1n << 64n) {
    fail("checkpoint tree size is not a canonical uint64");
  }
  const root = b64Strict(rootText, "checkpoint root hash");
  if (root.length !== 32) fail("checkpoint root hash is not 32 bytes");
  return { origin, size: BigInt(sizeText), root };
}

// Everything the Verify button checks, from the console's proof.json:
// the checkpoint's signature by the log key, then the entry's inclusion under that checkpoint.
export async function verifyProof(proof) {
  const verifier = await parseVkey(proof.vkey);
  const { body, verified } = await openNote(proof.checkpoint, [verifier]);
  const checkpoint = parseCheckpoint(body);
  if (checkpoint.size !== BigInt(proof.tree_size)) fail("checkpoint size differs from the proof's tree size");
  const entry = b64Strict(proof.entry, "entry");
  const hashes = proof.hashes.map((h, i) => b64Strict(h, `proof hash ${i}`));
  await verifyInclusion(BigInt(proof.leaf_index), checkpoint.size, await leafHash(entry), hashes, checkpoint.root);
  return {
    signer: verified.join(", "),
    keyId: verifier.id.toString(16).padStart(8, "0"),
    vkey: verifier.vkey,
    origin: checkpoint.origin,
    size: checkpoint.size.toString(),
    root: bytesToHex(checkpoint.root),
  };
}
