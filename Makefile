# Thin aliases for the scripts in hack/.
.PHONY: demo test control-plane-up control-plane-down crds fmt lint ci

demo:
	hack/demo

test:
	hack/test

control-plane-up:
	hack/control-plane up

control-plane-down:
	hack/control-plane down

crds:
	cargo run --quiet --bin crdgen

fmt:
	cargo fmt

lint:
	cargo clippy --all-targets -- -D warnings

ci:
	.ci/run
