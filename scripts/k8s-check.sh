#!/usr/bin/env bash
# Validates the Kubernetes manifests: renders the kustomization (default deploy/k8s) with kustomize and checks
# every resource, and the examples beside it, with kubeconform in strict mode (unknown fields and duplicate keys
# are errors) against the schemas the repository carries (deploy/k8s/schemas: Kubernetes 1.34 and KEDA 2.20's
# ScaledObject; `make k8s-schemas` writes them). Offline once the tools are there: kubeconform reads those files
# only, and a kind without a schema fails.
#
# The tools are pinned and built with `go install` into $K8S_TOOLS_DIR (default .tools/ in the repository) the
# first time, from the Go module proxy; Go is $GO, `go` on PATH or /usr/local/go/bin/go.
#
# Usage: scripts/k8s-check.sh [KUSTOMIZATION_DIR]      scripts/k8s-check.sh --install (the tools only)
set -euo pipefail
cd "$(dirname "$0")/.."

KUSTOMIZE_VERSION=v5.8.1
KUBECONFORM_VERSION=v0.8.0
# Keep in step with scripts/k8s-schemas.py.
KUBERNETES_VERSION=1.34.4
KEDA_VERSION=2.20.2
SCHEMAS="$PWD/deploy/k8s/schemas"
TOOLS="${K8S_TOOLS_DIR:-$PWD/.tools}"

fail() {
  echo "k8s-check: $*" >&2
  exit 1
}

go_binary() {
  local candidate
  for candidate in "${GO:-}" "$(command -v go || true)" /usr/local/go/bin/go; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
      echo "$candidate"
      return
    fi
  done
  return 1
}

# install NAME PACKAGE VERSION: $TOOLS/NAME-VERSION, built once.
install() {
  local name="$1" package="$2" version="$3" binary="$TOOLS/$1-$3" go tmp
  [ -x "$binary" ] && return
  go="$(go_binary)" || fail "Go is needed to install $name $version (set GO, or install Go: /usr/local/go/bin/go)"
  mkdir -p "$TOOLS" || fail "cannot create $TOOLS"
  tmp="$(mktemp -d "$TOOLS/.install.XXXXXX")"
  echo "k8s-check: installing $name $version into $TOOLS (go install $package@$version)" >&2
  if ! GOBIN="$tmp" "$go" install "$package@$version" >&2; then
    rm -rf "$tmp"
    fail "could not install $name $version with $go (is the Go module proxy, $("$go" env GOPROXY), reachable?)"
  fi
  mv -f "$tmp/$name" "$binary"
  rm -rf "$tmp"
}

install kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION"
install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"
[ "${1:-}" = --install ] && exit 0

DIR="${1:-deploy/k8s}"
[ -f "$DIR/kustomization.yaml" ] || fail "no kustomization.yaml in $DIR"

# The ConfigMap is generated from $DIR/router.toml: kustomize reads no file outside the kustomization.
cmp -s config/router.toml "$DIR/router.toml" ||
  fail "$DIR/router.toml differs from config/router.toml (the ConfigMap's source): cp config/router.toml $DIR/router.toml"

# kubeconform takes files by their .yaml name; this one's names the kustomization in its messages.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rendered="$work/kustomize-build-$(basename "$DIR").yaml"
"$TOOLS/kustomize-$KUSTOMIZE_VERSION" build "$DIR" >"$rendered" || fail "kustomize build $DIR failed"

echo "k8s-check: kustomize $KUSTOMIZE_VERSION build $DIR, kubeconform $KUBECONFORM_VERSION -strict (Kubernetes $KUBERNETES_VERSION, KEDA $KEDA_VERSION)"
examples=()
if [ -d "$DIR/examples" ]; then
  examples=("$DIR/examples")
fi
"$TOOLS/kubeconform-$KUBECONFORM_VERSION" -strict -summary -verbose \
  -kubernetes-version "$KUBERNETES_VERSION" \
  -schema-location "$SCHEMAS/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  -schema-location "$SCHEMAS/keda-v$KEDA_VERSION/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  "$rendered" "${examples[@]}" || fail "$DIR: invalid manifests (above)"
echo "k8s-check: $DIR is valid"
