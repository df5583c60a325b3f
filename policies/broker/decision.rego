# METADATA
# title: Default field-level data policy of the model broker
# description: >-
#   Decides, for one direction of one model call, whether the call may proceed and what
#   happens to every field and every entity found inside strings. Values never reach this
#   policy, only paths, types and labels, so its result is cached by the broker.
#
#   Request direction (what the model may see):
#     secret.*             redact, always
#     pci.card             mask, keep the last four
#     pii.*, finance.*     tokenize for remote models, allow in the broker's sandbox
#     net.ip               hash for remote models, allow in the sandbox
#     confidential         encrypt for remote models, allow in the sandbox
#     restricted           sandbox (a tenant may choose drop instead)
#     scan.truncated       redact (text beyond the detectors' scan cap is never passed unread)
#   Labels found by detectors inside a string act on that span only (entities); the field as a
#   whole is judged by its declared labels (vendor schema and buyer).
#   Response direction (what the buyer may get back):
#     secret.*             redact
#     pci.card             mask, keep the last four
#     pii.*, finance.*     masked unless the buyer sent that label in the request
#   Call-level denials: a purpose that forbids a label (pii.national_id.* for marketing),
#   a vendor the tenant forbids, a purpose the tenant did not allow.
#   Per-tenant settings come from data.broker (policies/broker/data.json).
package broker

import rego.v1

# Fail closed: nothing is allowed unless the rules below say so.
default allow := false

# Anything the plan does not mention explicitly is redacted by the broker.
default_action := "redact"

allow if count(_deny_reasons) == 0

# The document the broker evaluates (data.broker.decision).
decision := {
	"allow": allow,
	"reasons": sort([r | some r in _deny_reasons]),
	"default_action": default_action,
	"fields": fields,
	"entities": entities,
	"retention": retention,
}

fields := {f.path: action | some f in input.fields; action := _field_action(_whole_field_labels(f))}

# Labels that detectors found inside a field's text are acted on span by span (entities below),
# so that an e-mail address in a free-text note costs the model the address, not the note.
# The field as a whole is judged by the labels it carries as a whole: the vendor's schema and
# the buyer's own labels.
_whole_field_labels(f) := [label | some label in f.labels; not _found_inside(label, f.path)]

_found_inside(label, path) if {
	some e in input.entities
	e.label == label
	path in e.paths
}

entities := {e.label: object.get(_label_actions, e.label, _allow) | some e in input.entities}

retention := _tenant_setting("retention")

# --- call-level denials -------------------------------------------------------------------

_deny_reasons contains reason if {
	input.direction == "request"
	some label in _labels
	some family in object.get(data.broker.denied_labels_by_purpose, input.purpose, [])
	startswith(concat("", [label, "."]), concat("", [family, "."]))
	reason := sprintf("label %s may not be used for purpose %s", [label, input.purpose])
}

_deny_reasons contains reason if {
	input.model.vendor in object.get(_tenant, "forbidden_vendors", [])
	reason := sprintf("tenant %s does not allow vendor %s", [input.principal.tenant, input.model.vendor])
}

_deny_reasons contains reason if {
	allowed := _tenant.allowed_purposes
	not input.purpose in allowed
	reason := sprintf("tenant %s does not allow purpose %s", [input.principal.tenant, input.purpose])
}

_deny_reasons contains reason if {
	not input.direction in {"request", "response"}
	reason := "direction must be request or response"
}

# Every label of the call: on fields and on entities found inside strings.
_labels contains label if {
	some f in input.fields
	some label in f.labels
}

_labels contains label if {
	some e in input.entities
	label := e.label
}

# --- per-label actions --------------------------------------------------------------------

# Severity order: when a field carries several labels, the most protective action wins.
_rank := {
	"allow": 0, "mask": 1, "hash": 2, "tokenize": 3,
	"encrypt": 4, "sandbox": 5, "redact": 6, "drop": 7,
}

_allow := {"action": "allow"}

_mask_last_four := {"action": "mask", "keep_last": 4, "char": "*"}

_mask_most := {"action": "mask", "keep_last": 2, "char": "*"}

_is_sandbox if input.model.runtime == "sandbox"

# A field passes unchanged unless one of its labels means something here; with several such
# labels, the most protective action wins. (One function per case: regorus evaluates the
# common single-label field without building sets.)
_field_action(labels) := _allow if not _has_action(labels)

_field_action(labels) := _label_actions[labels[0]] if count(labels) == 1

_field_action(labels) := action if {
	count(labels) > 1
	actions := {a | some label in labels; a := _label_actions[label]}
	count(actions) > 0
	top := max({_rank[a.action] | some a in actions})
	action := [a | some a in actions; _rank[a.action] == top][0]
}

_has_action(labels) if {
	some label in labels
	_label_actions[label]
}

# What each label family becomes, per direction. A family is the first one or two
# dot-separated segments of a label: "pii" covers "pii.email" and "pii.national_id.cn" (but not
# "piix"), "pci.card" covers "pci.card" and "pci.card.amex". The one-segment family is tried
# first, so families of one table must not nest ("pii" and "pii.email" together).
_request_table := {
	"secret": {"action": "redact"},
	"scan": {"action": "redact"},
	"pci.card": _mask_last_four,
	"pii": _sandbox_or_tokenize,
	"finance": _sandbox_or_tokenize,
	"net.ip": _sandbox_or_hash,
	"confidential": _sandbox_or_encrypt,
	"restricted": _restricted_action,
}

_response_table := {
	"secret": {"action": "redact"},
	"scan": {"action": "redact"},
	"pci.card": _mask_last_four,
	"pii": _mask_most,
	"finance": _mask_most,
}

_table := _request_table if input.direction == "request"

_table := _response_table if input.direction == "response"

# Each distinct label is looked up once per evaluation; fields then only combine the results.
_label_actions[label] := action if {
	some label in _labels
	not label in _returned_to_buyer
	action := _family_action(split(label, "."))
}

_family_action(parts) := _table[parts[0]]

_family_action(parts) := _table[concat(".", [parts[0], parts[1]])] if {
	count(parts) > 1
	not _table[parts[0]]
}

# Personal data in an answer that the buyer itself sent (in the sandbox, where it travels in
# clear) goes back unchanged; any other personal data in an answer is the model's: masked.
_returned_to_buyer contains label if {
	input.direction == "response"
	some label in object.get(input, "request_labels", [])
	split(label, ".")[0] in {"pii", "finance"}
}

# In the broker's sandbox the value stays inside the broker, so it may pass unchanged.
_sandbox_or_tokenize := _allow if _is_sandbox

_sandbox_or_tokenize := {"action": "tokenize"} if not _is_sandbox

_sandbox_or_hash := _allow if _is_sandbox

_sandbox_or_hash := {"action": "hash"} if not _is_sandbox

_sandbox_or_encrypt := _allow if _is_sandbox

_sandbox_or_encrypt := {"action": "encrypt"} if not _is_sandbox

_restricted_action := {"action": "sandbox"} if _is_sandbox

_restricted_action := {"action": _tenant_setting("restricted_fallback")} if not _is_sandbox

# --- tenant settings ----------------------------------------------------------------------

_tenant := object.get(data.broker.tenants, input.principal.tenant, {})

_tenant_setting(name) := object.get(_tenant, name, data.broker.defaults[name])
