#!/usr/bin/env bash
# The wheel as a user gets it. `pip wheel --no-deps` builds it from the working tree; it must hold
# every module of worker/ and the default configurations (config/*.toml, as worker/defaults/), and no
# bench/ or tests/. Installed into a fresh virtualenv without extras, `llm-router demo` must name the
# `demo` extra in one line and exit 2; installed as 'WHEEL[demo]', `llm-router --version` and
# `llm-router demo`, run from a directory outside the repository, must exit 0.
# Downloads the dependencies from PyPI. PYTHON (default python3) makes the virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/llm-router-wheel-check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
started=$SECONDS

step() { echo "wheel-check: $*"; }
fail() {
  echo "wheel-check: FAILED: $*" >&2
  exit 1
}

# A copy of the files git knows (tracked and new, not ignored), as a fresh clone with these changes
# would have them: a build in the repo would leave build/ behind, whose build/lib can carry a module
# deleted since into the next wheel.
step "copying the working tree"
mkdir "$TMP/src" "$TMP/dist" "$TMP/elsewhere"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' file; do if [ -e "$file" ]; then printf '%s\0' "$file"; fi; done |
  tar -cf - --null -T - | tar -xf - -C "$TMP/src"

step "a fresh virtualenv ($("$PYTHON" --version))"
"$PYTHON" -m venv "$TMP/venv"
export PIP_DISABLE_PIP_VERSION_CHECK=1
PIP=("$TMP/venv/bin/python" -m pip --quiet)
BIN=$TMP/venv/bin

step "pip wheel --no-deps"
"${PIP[@]}" wheel --no-deps "$TMP/src" -w "$TMP/dist"
wheels=("$TMP"/dist/llm_router-*.whl)
[ "${#wheels[@]}" -eq 1 ] && [ -f "${wheels[0]}" ] || fail "expected one wheel in $TMP/dist"
WHEEL=${wheels[0]}
version=$(basename "$WHEEL" | cut -d- -f2)
step "$(basename "$WHEEL")"

"$BIN/python" - "$WHEEL" "$TMP/src" <<'EOF'
import sys
import zipfile
from pathlib import Path

wheel, src = zipfile.ZipFile(sys.argv[1]), Path(sys.argv[2])
names = set(wheel.namelist())
problems = []
tops = sorted({name.split("/")[0] for name in names})
stray = [top for top in tops if top != "worker" and not top.endswith(".dist-info")]
if stray:
    problems.append(f"not worker/ (bench/ and tests/ are not installed): {stray}")
modules = sorted(p.relative_to(src).as_posix() for p in (src / "worker").rglob("*.py"))
missing = [m for m in modules if m not in names]
if missing:
    problems.append(f"modules missing (a package not listed in pyproject.toml's [tool.setuptools] packages?): {missing}")
configs = sorted((src / "config").glob("*.toml"))
if not configs:
    problems.append("config/ holds no .toml")
for config in configs:
    packaged = f"worker/defaults/{config.name}"
    if packaged not in names:
        problems.append(f"{packaged} missing")
    elif wheel.read(packaged) != config.read_bytes():
        problems.append(f"{packaged} differs from config/{config.name}")
for problem in problems:
    print(f"wheel-check: FAILED: the wheel: {problem}", file=sys.stderr)
if problems:
    sys.exit(1)
print(f"wheel-check: the wheel holds the {len(modules)} modules of worker/ and {len(configs)} default configurations; nothing else")
EOF

# From a directory outside the repository, with nothing of the caller's setup that would bring the
# repo or another broker or configuration in.
run() { (cd "$TMP/elsewhere" && env -u PYTHONPATH -u KAFKA_BOOTSTRAP_SERVERS -u LLM_ROUTER_CONFIG "$@"); }

step "pip install WHEEL (no extras)"
"${PIP[@]}" install "$WHEEL"
set +e
out=$(run "$BIN/llm-router" demo 2>&1)
code=$?
set -e
[ "$code" -eq 2 ] && [ "$(wc -l <<<"$out")" -eq 1 ] && grep -qF "pip install 'llm-router[demo]'" <<<"$out" ||
  fail "without the demo extra, llm-router demo exited $code and printed: $out"
step "without the demo extra: exit 2, \"$out\""

step "pip install 'WHEEL[demo]'"
"${PIP[@]}" install "$WHEEL[demo]"
location=$(run "$BIN/python" -c "import worker; print(worker.__file__)")
[[ "$location" == "$TMP/venv/"* ]] || fail "worker was imported from $location, not from the virtualenv"

out=$(run "$BIN/llm-router" --version) || fail "llm-router --version exited $?"
[ "$out" = "llm-router $version" ] || fail "llm-router --version printed '$out', not 'llm-router $version'"
step "$out"

step "llm-router demo (in $TMP/elsewhere)"
demo_started=$SECONDS
if ! run timeout 300 "$BIN/llm-router" demo >"$TMP/demo.log" 2>&1; then
  tail -40 "$TMP/demo.log" >&2
  fail "llm-router demo did not exit 0"
fi
tail -5 "$TMP/demo.log"
step "llm-router demo exited 0 in $((SECONDS - demo_started)) s; the whole check took $((SECONDS - started)) s"
