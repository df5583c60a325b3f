# METADATA
# title: Tests of the default field-level data policy
# description: One test per promise in decision.rego, with inputs built by the helpers below.
package broker_test

import rego.v1

import data.broker

# --- input builders -----------------------------------------------------------------------

_principal(tenant) := {"tenant": tenant, "subject": "svc-crm", "roles": ["buyer"], "claims": {}}

_model(runtime) := {
	"id": "summarizer", "vendor": "openmodels", "version": "1.2.0",
	"runtime": runtime, "attributes": {},
}

_call(direction, runtime, labels) := {
	"direction": direction,
	"principal": _principal("initech"),
	"model": _model(runtime),
	"purpose": "support",
	"fields": [{"path": "/x", "type": "string", "labels": labels}],
	"entities": [],
}

_request(labels) := _call("request", "remote-oip", labels)

_sandboxed(labels) := _call("request", "sandbox", labels)

_action(call) := action if {
	action := broker.decision.fields["/x"] with input as call
}

# --- fail-closed defaults -----------------------------------------------------------------

test_default_action_is_redact if {
	broker.decision.default_action == "redact" with input as _request([])
}

test_unknown_direction_denies if {
	d := broker.decision with input as _call("sideways", "remote-oip", [])
	d.allow == false
	"direction must be request or response" in d.reasons
}

test_allowed_call_has_no_reasons if {
	d := broker.decision with input as _request(["pii.email"])
	d.allow == true
	d.reasons == []
}

test_unlabelled_field_passes if {
	_action(_request([])) == {"action": "allow"}
}

test_unknown_label_passes if {
	_action(_request(["vendor.internal_id"])) == {"action": "allow"}
}

# --- request direction --------------------------------------------------------------------

test_secrets_always_redacted if {
	every label in ["secret.private_key", "secret.jwt", "secret.cloud_key"] {
		_action(_request([label])) == {"action": "redact"}
		_action(_sandboxed([label])) == {"action": "redact"}
	}
}

test_card_masked_to_last_four if {
	_action(_request(["pci.card"])) == {"action": "mask", "keep_last": 4, "char": "*"}
}

test_pii_tokenized_for_remote_models if {
	every label in ["pii.email", "pii.phone", "pii.name", "pii.national_id.cn", "finance.iban"] {
		_action(_request([label])) == {"action": "tokenize"}
	}
}

test_pii_allowed_in_sandbox if {
	_action(_sandboxed(["pii.email"])) == {"action": "allow"}
	_action(_sandboxed(["finance.iban"])) == {"action": "allow"}
}

test_ip_hashed_for_remote_allowed_in_sandbox if {
	_action(_request(["net.ip"])) == {"action": "hash"}
	_action(_sandboxed(["net.ip"])) == {"action": "allow"}
}

test_confidential_encrypted_for_remote if {
	_action(_request(["confidential"])) == {"action": "encrypt"}
	_action(_sandboxed(["confidential"])) == {"action": "allow"}
}

test_restricted_goes_to_sandbox if {
	_action(_request(["restricted"])) == {"action": "sandbox"}
	_action(_sandboxed(["restricted"])) == {"action": "sandbox"}
}

test_strictest_label_wins if {
	_action(_request(["pii.name", "restricted"])) == {"action": "sandbox"}
	_action(_request(["restricted", "secret.jwt"])) == {"action": "redact"}
	_action(_request(["pci.card", "pii.name"])) == {"action": "tokenize"}
}

test_family_matches_whole_segments if {
	_action(_request(["piix.email"])) == {"action": "allow"}
	_action(_request(["secretive"])) == {"action": "allow"}
	_action(_request(["pci"])) == {"action": "allow"}
	_action(_request(["pci.card.amex"])) == {"action": "mask", "keep_last": 4, "char": "*"}
	_action(_request(["secret"])) == {"action": "redact"}
}

test_unknown_labels_do_not_weaken_known_ones if {
	_action(_request(["vendor.id", "pii.email", "other"])) == {"action": "tokenize"}
	_action(_request(["vendor.id", "other"])) == {"action": "allow"}
}

test_duplicate_labels_on_a_field if {
	_action(_request(["pii.email", "pii.email"])) == {"action": "tokenize"}
}

test_entities_get_label_actions if {
	call := object.union(_request([]), {"entities": [
		{"label": "pii.email", "paths": ["/x"]},
		{"label": "secret.jwt", "paths": ["/x"]},
		{"label": "unknown.thing", "paths": ["/x"]},
	]})
	d := broker.decision with input as call
	d.entities["pii.email"] == {"action": "tokenize"}
	d.entities["secret.jwt"] == {"action": "redact"}
	d.entities["unknown.thing"] == {"action": "allow"}
}

test_detected_entity_acts_on_its_span_not_the_whole_field if {
	call := object.union(_request(["pii.email"]), {"entities": [{"label": "pii.email", "paths": ["/x"]}]})
	d := broker.decision with input as call
	d.fields["/x"] == {"action": "allow"}
	d.entities["pii.email"] == {"action": "tokenize"}
}

test_declared_label_still_governs_the_field_beside_detected_ones if {
	call := object.union(_request(["confidential", "pii.email"]), {"entities": [{"label": "pii.email", "paths": ["/x"]}]})
	d := broker.decision with input as call
	d.fields["/x"] == {"action": "encrypt"}
}

test_entity_found_in_another_field_does_not_excuse_this_one if {
	call := object.union(_request(["pii.email"]), {"entities": [{"label": "pii.email", "paths": ["/y"]}]})
	d := broker.decision with input as call
	d.fields["/x"] == {"action": "tokenize"}
}

test_unscanned_text_is_redacted if {
	call := object.union(_request([]), {"entities": [{"label": "scan.truncated", "paths": ["/x"]}]})
	d := broker.decision with input as call
	d.entities["scan.truncated"] == {"action": "redact"}
	r := broker.decision with input as object.union(call, {"direction": "response"})
	r.entities["scan.truncated"] == {"action": "redact"}
}

# --- call-level denials -------------------------------------------------------------------

test_national_id_denied_for_marketing if {
	call := object.union(_request(["pii.national_id.us_ssn"]), {"purpose": "marketing"})
	d := broker.decision with input as call
	d.allow == false
	"label pii.national_id.us_ssn may not be used for purpose marketing" in d.reasons
}

test_national_id_entity_denied_for_marketing if {
	call := object.union(_request([]), {
		"purpose": "marketing",
		"entities": [{"label": "pii.national_id.cn", "paths": ["/x"]}],
	})
	not broker.allow with input as call
}

test_other_pii_fine_for_marketing if {
	call := object.union(_request(["pii.email"]), {"purpose": "marketing"})
	broker.allow with input as call
}

test_tenant_forbidden_vendor_denied if {
	call := object.union(_request([]), {
		"principal": _principal("globex"),
		"model": object.union(_model("remote-oip"), {"vendor": "shadyai"}),
	})
	d := broker.decision with input as call
	"tenant globex does not allow vendor shadyai" in d.reasons
}

test_tenant_purpose_allow_list if {
	call := object.union(_request([]), {"principal": _principal("globex"), "purpose": "training"})
	d := broker.decision with input as call
	d.reasons == ["tenant globex does not allow purpose training"]
	broker.allow with input as object.union(call, {"purpose": "support"})
}

test_forbidden_vendor_from_injected_data if {
	call := object.union(_request([]), {"principal": _principal("initech")})
	not broker.allow with input as call
		with data.broker.tenants as {"initech": {"forbidden_vendors": ["openmodels"]}}
}

# --- per-tenant settings ------------------------------------------------------------------

test_default_retention_keeps_nothing if {
	r := broker.decision.retention with input as _request([])
	r == {"request_ttl_s": 0, "response_ttl_s": 0}
}

test_acme_keeps_requests_7_days_answers_30 if {
	call := object.union(_request([]), {"principal": _principal("acme")})
	r := broker.decision.retention with input as call
	r == {"request_ttl_s": 604800, "response_ttl_s": 2592000}
}

test_globex_drops_restricted_for_remote_models if {
	call := object.union(_request(["restricted"]), {"principal": _principal("globex")})
	_action(call) == {"action": "drop"}
	sandboxed := object.union(call, {"model": _model("sandbox")})
	_action(sandboxed) == {"action": "sandbox"}
}

# --- response direction -------------------------------------------------------------------

_response(labels, sent) := object.union(_call("response", "remote-oip", labels), {"request_labels": sent})

test_response_secrets_redacted if {
	_action(_response(["secret.cloud_key"], ["secret.cloud_key"])) == {"action": "redact"}
}

test_response_card_masked if {
	_action(_response(["pci.card"], [])) == {"action": "mask", "keep_last": 4, "char": "*"}
}

test_response_pii_not_sent_by_buyer_masked if {
	_action(_response(["pii.phone"], ["pii.email"])) == {"action": "mask", "keep_last": 2, "char": "*"}
}

test_response_pii_sent_by_buyer_returned if {
	_action(_response(["pii.email"], ["pii.email"])) == {"action": "allow"}
}

test_response_confidential_and_restricted_returned if {
	_action(_response(["confidential", "restricted", "net.ip"], [])) == {"action": "allow"}
}

test_response_no_purpose_denial if {
	call := object.union(_response(["pii.national_id.cn"], []), {"purpose": "marketing"})
	broker.allow with input as call
}
