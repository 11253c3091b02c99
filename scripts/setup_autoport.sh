#!/usr/bin/env bash
# setup_autoport.sh: validate (and if needed prepare) a Python environment for porting
# HuggingFace models to AWS Neuron with NxD Inference. Same interface and exit codes as the
# Autoport skill's setup script; run with --help for both.
set -u -o pipefail

usage() {
    cat <<'EOF'
Usage: setup_autoport.sh [--venv PATH] [--validate-only | --dry-run] [-h|--help]

Steps:
  1. detect the OS (/etc/os-release): Ubuntu -> requirements-ubuntu.txt,
     Amazon Linux 2023 -> requirements-al2023.txt (anything else falls back to Ubuntu's)
  2. check the Neuron system packages (aws-neuronx-dkms, aws-neuronx-runtime-lib,
     aws-neuronx-collectives, aws-neuronx-tools) with dpkg-query or rpm
  3. use the venv at PATH (default ./_venv), or create it with Python 3.10+, and install
     the requirements file plus this project into it with pip
  4. validate: python -m pytest_autoport.envcheck --check-env inside the venv

Options:
  --venv PATH       venv to use or create (default: ./_venv)
  --validate-only   install nothing; exit 2 when the venv is missing or not usable
  --dry-run         change nothing; show what an install would do and exit 4 if one is needed
  -h, --help        show this help

Exit codes:
  0  environment ready; three lines RESOLVED:NXDI_SRC=..., RESOLVED:NXD_SRC=...,
     RESOLVED:TRANSFORMERS_SRC=... are printed (only on success)
  2  hard failure: missing system packages, no Python 3.10+, pip failure, or an unusable
     environment under --validate-only
  3  validation still failing after the install
  4  dry run only: an install is required; do not proceed without the user's consent
  5  packages present but failing at import (GLIBC, driver mismatch): reinstalling will not fix it

Environment (mostly for tests and unusual hosts):
  AUTOPORT_OS_RELEASE         os-release file to read (default /etc/os-release)
  AUTOPORT_PYTHON             base Python used to create the venv (default: first Python 3.10+ on PATH)
  AUTOPORT_PIP                pip command to install with (default: "<venv python> -m pip")
  AUTOPORT_REQUIRE            comma-separated packages the validation requires (default: the checker's)
  AUTOPORT_SKIP_SYSTEM_CHECK  1: skip step 2 (a machine without the Neuron driver)
EOF
}

log() { printf '[autoport-setup] %s\n' "$*"; }
fail() {
    local code="$1"
    shift
    printf '[autoport-setup] ERROR: %s\n' "$*" >&2
    exit "$code"
}

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT_ROOT="$(dirname "$SCRIPT_DIR")"
VENV="./_venv"
VALIDATE_ONLY=0
DRY_RUN=0

while [ $# -gt 0 ]; do
    case "$1" in
        --venv)
            if [ $# -lt 2 ] || [ -z "$2" ]; then
                usage >&2
                fail 2 "--venv needs a path"
            fi
            VENV="$2"
            shift 2
            ;;
        --venv=*)
            VENV="${1#--venv=}"
            shift
            ;;
        --validate-only)
            VALIDATE_ONLY=1
            shift
            ;;
        --dry-run)
            DRY_RUN=1
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            fail 2 "unknown argument: $1"
            ;;
    esac
done
if [ "$VALIDATE_ONLY" = 1 ] && [ "$DRY_RUN" = 1 ]; then
    fail 2 "--validate-only and --dry-run exclude each other"
fi

# ---- 1. detect the OS -----------------------------------------------------------------------
OS_RELEASE="${AUTOPORT_OS_RELEASE:-/etc/os-release}"
os_field() { sed -n "s/^$1=//p" "$OS_RELEASE" | head -n 1 | tr -d "\"'"; }
OS_ID=""
OS_VERSION=""
OS_NAME="unknown OS"
if [ -r "$OS_RELEASE" ]; then
    OS_ID="$(os_field ID)"
    OS_VERSION="$(os_field VERSION_ID)"
    OS_NAME="$(os_field PRETTY_NAME)"
    [ -n "$OS_NAME" ] || OS_NAME="$OS_ID $OS_VERSION"
fi
case "$OS_ID:$OS_VERSION" in
    ubuntu:*)
        REQ_NAME="requirements-ubuntu.txt"
        PKG_TOOL="dpkg"
        ;;
    amzn:2023*)
        REQ_NAME="requirements-al2023.txt"
        PKG_TOOL="rpm"
        ;;
    *)
        log "note: '$OS_NAME' (from $OS_RELEASE) is not a supported OS (Ubuntu or Amazon Linux 2023):" \
            "falling back to requirements-ubuntu.txt"
        REQ_NAME="requirements-ubuntu.txt"
        if command -v dpkg-query >/dev/null 2>&1; then
            PKG_TOOL="dpkg"
        elif command -v rpm >/dev/null 2>&1; then
            PKG_TOOL="rpm"
        else
            PKG_TOOL="none"
        fi
        ;;
esac
REQ_FILE="$SCRIPT_DIR/$REQ_NAME"
[ -r "$REQ_FILE" ] || fail 2 "requirements file not found: $REQ_FILE"
log "step 1/4: OS $OS_NAME -> $REQ_FILE"

# ---- 2. Neuron system packages ----------------------------------------------------------------
SYSTEM_PACKAGES="aws-neuronx-dkms aws-neuronx-runtime-lib aws-neuronx-collectives aws-neuronx-tools"
pkg_installed() {
    case "$PKG_TOOL" in
        dpkg) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" ;;
        rpm) rpm -q "$1" >/dev/null 2>&1 ;;
        *) return 1 ;;
    esac
}
if [ "${AUTOPORT_SKIP_SYSTEM_CHECK:-0}" = 1 ]; then
    log "step 2/4: skipped (AUTOPORT_SKIP_SYSTEM_CHECK=1): Neuron system packages not checked"
else
    case "$PKG_TOOL" in
        dpkg) TOOL_CMD="dpkg-query" ;;
        rpm) TOOL_CMD="rpm" ;;
        *) TOOL_CMD="" ;;
    esac
    if [ -z "$TOOL_CMD" ] || ! command -v "$TOOL_CMD" >/dev/null 2>&1; then
        fail 2 "cannot check the Neuron system packages: ${TOOL_CMD:-neither dpkg-query nor rpm} not found"
    fi
    MISSING_SYSTEM=""
    for pkg in $SYSTEM_PACKAGES; do
        pkg_installed "$pkg" || MISSING_SYSTEM="$MISSING_SYSTEM $pkg"
    done
    if [ -n "$MISSING_SYSTEM" ]; then
        if [ "$PKG_TOOL" = rpm ]; then hint="dnf install"; else hint="apt-get install"; fi
        fail 2 "missing Neuron system packages:$MISSING_SYSTEM" \
            "(install them from the Neuron repository: sudo $hint$MISSING_SYSTEM; or use a Neuron DLAMI)"
    fi
    log "step 2/4: Neuron system packages present ($PKG_TOOL): $SYSTEM_PACKAGES"
fi

# ---- 3. Python environment -----------------------------------------------------------------------
py_version() { "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null | head -n 1; }
version_ok() {
    local major minor rest
    IFS=. read -r major minor rest <<<"$1"
    case "$major:$minor" in *[!0-9:]* | :* | *:) return 1 ;; esac
    [ "$major" -gt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -ge 10 ]; }
}
venv_python() {
    local name
    for name in python python3; do
        if [ -x "$VENV/bin/$name" ]; then
            echo "$VENV/bin/$name"
            return 0
        fi
    done
    return 1
}
find_base_python() {
    local candidate path
    if [ -n "${AUTOPORT_PYTHON:-}" ]; then
        version_ok "$(py_version "$AUTOPORT_PYTHON")" && echo "$AUTOPORT_PYTHON" && return 0
        return 1
    fi
    for candidate in python3.13 python3.12 python3.11 python3.10 python3 python; do
        path="$(command -v "$candidate" 2>/dev/null)" || continue
        if version_ok "$(py_version "$path")"; then
            echo "$path"
            return 0
        fi
    done
    return 1
}
no_python() {
    if [ -n "${AUTOPORT_PYTHON:-}" ]; then
        fail 2 "AUTOPORT_PYTHON=$AUTOPORT_PYTHON is not a Python 3.10+ (found: $(py_version "$AUTOPORT_PYTHON"))"
    fi
    fail 2 "no Python 3.10 or later found on PATH (looked for python3.13 ... python3.10, python3, python)"
}

VALIDATE_OUT=""
VALIDATE_RC=0
validate() { # run the checker in the venv; output kept in VALIDATE_OUT
    local args=(--check-env)
    [ -n "${AUTOPORT_REQUIRE:-}" ] && args+=(--require "$AUTOPORT_REQUIRE")
    log "step 4/4: validating: $1 -m pytest_autoport.envcheck ${args[*]}"
    VALIDATE_OUT="$(PYTHONPATH="$PROJECT_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$1" -m pytest_autoport.envcheck "${args[@]}" 2>&1)"
    VALIDATE_RC=$?
}
show_validation() { # $1=1: keep the RESOLVED lines (printed on success only)
    if [ "$1" = 1 ]; then
        printf '%s\n' "$VALIDATE_OUT"
    else
        printf '%s\n' "$VALIDATE_OUT" | grep -v '^RESOLVED:'
    fi
}
ready() {
    show_validation 1
    log "environment ready ($VENV)"
    exit 0
}
broken() {
    show_validation 0
    fail 5 "packages are installed but fail at import (see BROKEN above: GLIBC, driver mismatch, ...);" \
        "reinstalling will not fix this: check the Neuron driver/runtime versions or use a Neuron DLAMI"
}

[ "$DRY_RUN" = 1 ] && export PYTHONDONTWRITEBYTECODE=1
VPY=""
if VPY="$(venv_python)"; then
    version="$(py_version "$VPY")"
    version_ok "$version" || fail 2 "the venv at $VENV has Python '${version:-unknown}' (not runnable or older than 3.10)"
    log "step 3/4: using the venv at $VENV (Python $version)"
    validate "$VPY"
    case "$VALIDATE_RC" in
        0) ready ;;
        5) broken ;;
    esac
    show_validation 0
    if [ "$VALIDATE_ONLY" = 1 ]; then
        fail 2 "the venv at $VENV is not usable (validation exit $VALIDATE_RC) and --validate-only installs nothing"
    fi
    log "step 3/4: required packages are missing from $VENV: an install is needed"
else
    [ "$VALIDATE_ONLY" = 1 ] && fail 2 "no venv at $VENV (no $VENV/bin/python) and --validate-only creates none"
    log "step 3/4: no venv at $VENV: it must be created"
fi

BASE_PY=""
if [ -z "$VPY" ]; then
    BASE_PY="$(find_base_python)" || no_python
fi

pip_install() {
    if [ -n "${AUTOPORT_PIP:-}" ]; then
        # shellcheck disable=SC2086  # AUTOPORT_PIP may be a command with arguments
        $AUTOPORT_PIP install "$@"
    else
        "$VPY" -m pip install "$@"
    fi
}

if [ "$DRY_RUN" = 1 ]; then
    log "dry run: nothing was installed, created or changed. An install would:"
    if [ -z "$VPY" ]; then
        log "  create the venv: $BASE_PY -m venv $VENV   (Python $(py_version "$BASE_PY"))"
    fi
    log "  pip install -r $REQ_FILE:"
    grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' "$REQ_FILE" | while IFS= read -r requirement; do
        log "      $requirement"
    done
    log "  pip install -e $PROJECT_ROOT"
    log "  then validate again"
    log "dry run: an install is required; re-run without --dry-run only with the user's consent"
    exit 4
fi

if [ -z "$VPY" ]; then
    log "step 3/4: creating the venv: $BASE_PY -m venv $VENV"
    "$BASE_PY" -m venv "$VENV" ||
        fail 2 "could not create a venv at $VENV with $BASE_PY (on Debian/Ubuntu: apt-get install python3-venv)"
    VPY="$(venv_python)" || fail 2 "venv created at $VENV but it has no bin/python"
fi
log "step 3/4: installing $REQ_FILE into $VENV"
pip_install -r "$REQ_FILE" || fail 2 "pip failed to install $REQ_FILE into $VENV"
log "step 3/4: installing this project ($PROJECT_ROOT) into $VENV"
pip_install -e "$PROJECT_ROOT" || fail 2 "pip failed to install $PROJECT_ROOT into $VENV"

validate "$VPY"
case "$VALIDATE_RC" in
    0) ready ;;
    5) broken ;;
esac
show_validation 0
fail 3 "validation still fails after the install (exit $VALIDATE_RC). Alternatives: a Neuron DLAMI or" \
    "Deep Learning Container with the SDK preinstalled, a venv from AWS's Neuron setup guide (--venv PATH)," \
    "or the harness's torch target, which needs no Neuron SDK"
