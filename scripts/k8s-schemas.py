"""Writes the JSON schemas `make k8s-check` validates deploy/k8s/ against (kubeconform, strict, offline).

`make k8s-schemas` runs it; the output is committed under deploy/k8s/schemas/. Its sources come through the Go module
proxy (`go mod download`): the OpenAPI document of Kubernetes (k8s.io/kubernetes, api/openapi-spec/swagger.json) and
KEDA's ScaledObject CRD (github.com/kedacore/keda/v2, config/crd/bases/keda.sh_scaledobjects.yaml). The conversion
is kubeconform's own (scripts/openapi2jsonschema.py, and yannh/kubernetes-json-schema's "standalone-strict"
variant): each schema stands alone (references inlined), an object with properties accepts no others (strict), and
int-or-string fields take either. Descriptions are left out: kubeconform's messages name fields, not their docs.

Usage: python scripts/k8s-schemas.py [--out deploy/k8s/schemas]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

# Keep in step with scripts/k8s-check.sh (KUBERNETES_VERSION, KEDA_VERSION).
KUBERNETES_VERSION = "1.34.4"
KEDA_VERSION = "2.20.2"
# (definition in Kubernetes' OpenAPI document, apiVersion): every kind deploy/k8s/ and its examples use.
KINDS = [
    ("io.k8s.api.core.v1.ConfigMap", "v1"),
    ("io.k8s.api.core.v1.Secret", "v1"),
    ("io.k8s.api.apps.v1.Deployment", "apps/v1"),
    ("io.k8s.api.batch.v1.Job", "batch/v1"),
    ("io.k8s.api.policy.v1.PodDisruptionBudget", "policy/v1"),
]
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
# As kubeconform's schemas have them: what YAML may write for these scalar types.
SCALARS = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {"oneOf": [{"type": "string"}, {"type": "number"}]},
}


def go_binary() -> str:
    """The Go command: $GO, else `go` on PATH, else the usual install path."""
    found = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(found).exists():
        sys.exit(f"k8s-schemas: Go is needed to download the sources (tried {found}; set GO)")
    return found


def module_dir(module: str, version: str) -> Path:
    """The extracted source of a Go module, downloaded through the module proxy when not in the module cache."""
    result = subprocess.run(
        [go_binary(), "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True, check=False
    )
    info = json.loads(result.stdout or "{}")
    if "Dir" not in info:
        sys.exit(f"k8s-schemas: go mod download {module}@{version} failed: {info.get('Error') or result.stderr}")
    return Path(info["Dir"])


def strict(node: Any) -> Any:
    """`node` with no description and, in every object schema that lists properties, no others allowed (unless it
    says otherwise or keeps unknown fields)."""
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items() if key != "description"}
    closed = "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields")
    if closed and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def inline(node: Any, definitions: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """`node` with every $ref to `definitions` replaced by the definition (standalone)."""
    if isinstance(node, list):
        return [inline(item, definitions, seen) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].removeprefix("#/definitions/")
        if name in SCALARS:
            return SCALARS[name]
        if name in seen:
            sys.exit(f"k8s-schemas: {name} refers to itself; it cannot be inlined")
        return inline(definitions[name], definitions, (*seen, name))
    return {key: inline(value, definitions, seen) for key, value in node.items()}


def schema_name(kind: str, api_version: str) -> str:
    """kubeconform's file name for a kind: {kind}{-group}-{version}.json, lower case, the group's first label."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind}{suffix}.json".lower()


def write(path: Path, schema: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"{path} ({path.stat().st_size:,} bytes)")


def kubernetes_schemas(out: Path) -> dict[str, Any]:
    """The schemas of KINDS; returns the strict ObjectMeta schema, which the CRD's metadata takes too."""
    spec = module_dir("k8s.io/kubernetes", f"v{KUBERNETES_VERSION}") / "api" / "openapi-spec" / "swagger.json"
    definitions = json.loads(spec.read_text())["definitions"]
    folder = out / f"v{KUBERNETES_VERSION}-standalone-strict"
    for name, api_version in KINDS:
        kind = name.rsplit(".", 1)[1]
        write(folder / schema_name(kind, api_version), strict(inline(definitions[name], definitions)))
    return strict(inline(definitions[OBJECT_META], definitions))


def keda_schema(out: Path, object_meta: dict[str, Any]) -> None:
    """ScaledObject (keda.sh/v1alpha1) from KEDA's CRD, its metadata checked as Kubernetes' ObjectMeta."""
    crd_path = (
        module_dir("github.com/kedacore/keda/v2", f"v{KEDA_VERSION}") / "config/crd/bases/keda.sh_scaledobjects.yaml"
    )
    crd = yaml.safe_load(crd_path.read_text())
    for version in crd["spec"]["versions"]:
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = object_meta
        write(
            out / f"keda-v{KEDA_VERSION}" / schema_name(crd["spec"]["names"]["kind"], f"keda.sh/{version['name']}"),
            schema,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "deploy/k8s/schemas")
    args = parser.parse_args()
    keda_schema(args.out, kubernetes_schemas(args.out))


if __name__ == "__main__":
    main()
