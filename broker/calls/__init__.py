"""The path of one call: parse and bound the payload, resolve the model, dispatch, answer."""
