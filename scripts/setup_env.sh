# Sourced by scripts/main_job.sh and .ci/run: a virtual environment of the project's own, with torch==2.13.0 first
# (a CPU build; an unpinned torch pulls gigabytes of CUDA wheels), then this clone with the extras asked for.
#   source scripts/setup_env.sh [EXTRAS]        e.g. `source scripts/setup_env.sh test`
# Where: $VIRTUAL_ENV when one is active, else $MEMCTL_VENV, else .venv/ in the clone. The environment is rebuilt
# from nothing whenever pyproject.toml changes (its hash is stamped inside), so an undeclared import fails here as it
# would on a new machine; otherwise only this clone is (re)installed, which takes seconds.
_memctl_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_memctl_extras="${1:-}"
_memctl_venv="${VIRTUAL_ENV:-${MEMCTL_VENV:-$_memctl_root/.venv}}"
_memctl_hash="$(cat "$_memctl_root/pyproject.toml" | sha256sum | cut -c1-16)"
_memctl_stamp="$_memctl_venv/.memctl-$_memctl_hash-${_memctl_extras:-core}"
_memctl_pip() {
  # pip's notes about this machine's optional local package folders are noise; real errors still stop the script.
  python -m pip install --quiet --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}
if [ -z "${VIRTUAL_ENV:-}" ] && ! ls "$_memctl_venv"/.memctl-"$_memctl_hash"-* >/dev/null 2>&1; then
  rm -rf "$_memctl_venv"
  python3 -m venv "$_memctl_venv"
fi
export VIRTUAL_ENV="$_memctl_venv"
export PATH="$_memctl_venv/bin:$PATH"
if [ ! -f "$_memctl_stamp" ]; then
  _memctl_pip torch==2.13.0
  _memctl_pip -e "$_memctl_root${_memctl_extras:+[$_memctl_extras]}"
  touch "$_memctl_stamp"
else
  _memctl_pip --no-deps -e "$_memctl_root"
fi
unset _memctl_root _memctl_extras _memctl_venv _memctl_hash _memctl_stamp
unset -f _memctl_pip
