// The entry page's Verify button: fetch the proof, check it here, show the outcome.
import { verifyProof } from "./verify.js";

const button = document.getElementById("verify");
const result = document.getElementById("verify-result");

function show(id, text) {
  document.getElementById(id).textContent = text;
}

button.addEventListener("click", async () => {
  button.disabled = true;
  result.className = "result";
  result.textContent = "Verifying…";
  document.getElementById("verify-details").hidden = true;
  try {
    const response = await fetch(button.dataset.proof, { credentials: "same-origin" });
    if (!response.ok) throw new Error(`the console answered ${response.status}`);
    const proof = await response.json();
    const report = await verifyProof(proof);
    result.className = "result ok";
    result.textContent = `Verified: entry is in the log under a checkpoint of size ${report.size} signed by ${report.signer}.`;
    show("verify-signer", `${report.signer} (key ID ${report.keyId})`);
    show("verify-vkey", report.vkey);
    show(
      "verify-vkey-source",
      proof.vkey_source === "pinned"
        ? "pinned in the console's configuration"
        : "served by the broker: compare it with the key published for your log",
    );
    show("verify-origin", report.origin);
    show("verify-size", report.size);
    show("verify-root", report.root);
    document.getElementById("verify-details").hidden = false;
  } catch (error) {
    result.className = "result bad";
    result.textContent = `NOT verified: ${error.message}`;
  } finally {
    button.disabled = false;
  }
});
