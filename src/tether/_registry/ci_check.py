"""`tether check`: the CI gate between an application and the models it pins.

For every pin in tether.lock: the version exists and its bytes verify; the
application's pinned dependencies satisfy the model's recorded environment
(same classification and policy as load); the schema the application declares
it sends is compatible with the model's signature; and the model's policy
(signatures, deprecation) holds. Each failure says what to change.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

from .._environment import compare_environments, evaluate
from .._environment.app_requirements import FORMATS, AppRequirements, read_requirements
from .._environment.capture import canonical_name
from .._environment.compare import Difference
from .._environment.policy import recorded_pins
from .._errors import IntegrityError, TetherError
from .._lockfile import LockFile, read_lock
from .._schema import Schema, Signature, check_compatibility
from . import env_check
from .pinning import pinned_version
from .trust import own_database, pinned_load_keys, vouched_by_pinned_keys

if TYPE_CHECKING:
    from .registry import Registry


@dataclass
class CheckResult:
    model: str
    check: str
    ok: bool
    message: str
    fix: str | None = None


@dataclass
class CheckReport:
    lock: str
    requirements: str | None
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "lock": self.lock,
            "requirements": self.requirements,
            "results": [asdict(r) for r in self.results],
        }

    def to_junit(self) -> str:
        failures = sum(not r.ok for r in self.results)
        cases = []
        for r in self.results:
            body = ""
            if not r.ok:
                text = r.message + (f"\nfix: {r.fix}" if r.fix else "")
                body = f"<failure message={quoteattr(r.message)}>{escape(text)}</failure>"
            cases.append(
                f"  <testcase classname={quoteattr('tether.check.' + r.model)} "
                f"name={quoteattr(r.check)}>{body}</testcase>"
            )
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            f'<testsuite name="tether check" tests="{len(self.results)}" '
            f'failures="{failures}">\n' + "\n".join(cases) + "\n</testsuite>\n"
        )


def application_environment(requirements: dict[str, str], python: str | None) -> dict[str, Any]:
    return {
        "python": python or platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": sys.platform,
        "machine": platform.machine(),
        "packages": requirements,
    }


def _unpinned_frameworks(
    version: Any, app: AppRequirements, frameworks: list[str], found: list[Difference]
) -> list[Difference]:
    """The model's frameworks (and numpy) the application does not pin to one version.

    A range lets pip install another version than the model was logged with (and
    one that excludes it certainly does); a framework the application does not name
    at all is missing. ``compare_environments`` sees neither: it compares pins.
    """
    recorded = {canonical_name(k): str(v)
                for k, v in (version.environment.get("packages") or {}).items()}
    named = {d.name for d in found}
    extra = []
    for package in sorted({canonical_name(f) for f in frameworks} | {"numpy"}):
        have = recorded.get(package)
        if have is None or package in app.pins or package in named:
            continue
        kind = "numpy" if package == "numpy" else "framework"
        admits = app.admits(package, have)
        if admits is None:
            extra.append(Difference(kind, package, have, None, "missing"))
        else:
            spec = app.ranges[package] or "any version"
            why = "allowed, not pinned" if admits else f"excludes {have}"
            extra.append(Difference(kind, package, have, f"{spec} ({why})", "unpinned"))
    return extra


def run_check(
    registry: Registry,
    *,
    lock_path: Path,
    requirements_path: Path | None,
    python: str | None = None,
    env_policy: str | None = None,
    verify_bytes: bool = True,
    require_signature: bool = False,
    check_environment: bool = True,
) -> CheckReport:
    """Check every pin of ``lock_path``. ``require_signature``: each pinned version must
    carry a signature whatever its policy says, checked here with the keys pinned in
    TETHER_LOAD_KEYS when they are set or the registry is a server (whose policy is its
    word: a lying one dropped the requirement and passed the gate, a review)."""
    lock: LockFile = read_lock(lock_path)
    app = read_requirements(requirements_path) if requirements_path is not None else None
    pins = app.pins if app is not None else None
    report = CheckReport(str(lock_path), str(requirements_path) if requirements_path else None)
    # The gate's own policy: strict unless the call says otherwise. TETHER_ENV_POLICY=off
    # or a registry's env_policy of "warn" (chosen for easy loads in notebooks) turned
    # the gate off without a word (a review).
    policy = env_check.choose_policy(env_policy or env_check.DEFAULT_POLICY, None)
    add = report.results.append
    if not lock.models:
        add(CheckResult("(none)", "pins", False, f"{lock_path} pins no model: nothing was "
                        "checked", "pin the models the application loads: tether lock add REF"))
    for name, entry in sorted(lock.models.items()):
        try:
            version = pinned_version(registry, name, entry)
        except IntegrityError as error:
            # The pinned version is there but what the registry holds for it does not
            # hash to its digest: a refusal, and re-pinning would be the wrong advice.
            add(CheckResult(name, "intact", False, error.message, error.hint))
            continue
        except TetherError as error:
            add(
                CheckResult(
                    name,
                    "exists",
                    False,
                    f"{name} {entry.semver} (sha:{entry.digest[:12]}) is not in the registry: "
                    f"{error.message}",
                    f"re-pin with `tether lock add {entry.ref}`",
                )
            )
            continue
        add(CheckResult(name, "exists", True, f"{version.ref} {version.short_digest}"))
        if verify_bytes:
            problems = registry.store.verify(version.files, label=version.ref)
            add(
                CheckResult(
                    name,
                    "bytes",
                    not problems,
                    "; ".join(problems) or f"{len(version.files)} file(s) verified",
                    "restore the store from a backup or re-log the model" if problems else None,
                )
            )
        if check_environment and app is None:
            add(CheckResult(
                name, "environment", False,
                "no requirements file to compare with: the environment was not checked",
                f"give --requirements FILE ({FORMATS}), or --no-environment to skip this "
                "check on purpose"))
        if check_environment and app is not None and pins is not None:
            app_env = application_environment(pins, python)
            frameworks = list(version.flavor.get("framework_packages", []))
            found = [
                d
                for d in compare_environments(version.environment, app_env, frameworks)
                # The app need not install what the training machine happened to have.
                if not (d.kind == "package" and d.level == "missing")
                # Not pinned is not missing when a range names it: judged below.
                and not (d.level == "missing" and d.name in app.ranges)
            ]
            found += _unpinned_frameworks(version, app, frameworks, found)
            verdict = evaluate(found, policy)
            fixes = recorded_pins(verdict.refusals)
            add(
                CheckResult(
                    name,
                    "environment",
                    verdict.ok,
                    "; ".join(str(d) for d in verdict.refusals)
                    or "satisfied"
                    + (
                        f"; warnings: {'; '.join(str(d) for d in verdict.warnings)}"
                        if verdict.warnings
                        else ""
                    ),
                    f"pin {', '.join(fixes)} in {requirements_path}"
                    if fixes
                    else ("use the recorded Python/platform" if verdict.refusals else None),
                )
            )
        if entry.sends is not None:
            add(_schema_result(name, version.signature, entry.sends))
        trust = registry.trust_facts(version)
        required, valid = trust["require_signed_by"], trust["valid_signers"]
        sig_problems = trust["signature_problems"]
        if required or require_signature:
            signed = bool(set(valid) & set(required)) if required else bool(valid)
            detail = (f"signed by {', '.join(valid)}" if signed
                      else f"needs a signature by {' or '.join(required) or 'a trusted key'}"
                      + (f" ({'; '.join(sig_problems)})" if sig_problems else ""))
            fix = None if signed else f"tether sign {version.ref} --key KEYFILE"
            if signed and (not own_database(registry) or pinned_load_keys()):
                signed, detail, fix = _checked_here(version, trust, required,
                                                    demanded=require_signature)
            add(CheckResult(name, "signature", signed, detail, fix))
        deprecated = version.status == "deprecated" or trust["deprecated_by_policy"]
        add(
            CheckResult(
                name,
                "not deprecated",
                not deprecated,
                f"{version.ref} is deprecated" if deprecated else "ok",
                f"tether lock update {name} (after promoting a newer version)"
                if deprecated
                else None,
            )
        )
    return report


def _checked_here(version: Any, trust: dict[str, Any], required: list[str], *,
                  demanded: bool) -> tuple[bool, str, str | None]:
    """A signature the gate rests on, checked here with the keys pinned in
    TETHER_LOAD_KEYS: a compromised server (or anyone on the way over http) could
    otherwise pass it for any version. The server's names for its signers are not
    repeated as if checked (a review: any pinned key passed as "release"). Without
    pinned keys the result says it rests on the server's word, and fails when the
    caller demanded a signature (``--require-signature``)."""
    names = f" (its policy asks for {' or '.join(required)})" if required else ""
    if not pinned_load_keys():
        if demanded:
            return (False, "a signature checked here is required, but no key is pinned in "
                    "TETHER_LOAD_KEYS", "pin the public key of the signer in TETHER_LOAD_KEYS")
        return True, (f"signed by {', '.join(trust['valid_signers'])} (the server's word: "
                      "pin the public key in TETHER_LOAD_KEYS to check it here)"), None
    key = vouched_by_pinned_keys(version, trust)
    if key is None:
        return (False, f"no signature on it by a key pinned in TETHER_LOAD_KEYS{names}",
                f"tether sign {version.ref} --key KEYFILE with the key whose public half "
                "you pinned")
    return True, f"signed by pinned key {key}, checked here{names}", None


def _schema_result(
    name: str, signature: dict[str, Any] | None, sends: dict[str, Any]
) -> CheckResult:
    if signature is None:
        return CheckResult(
            name,
            "schema",
            False,
            "the model has no signature to check against",
            "log the model with input_example= or signature=",
        )
    model = Signature.from_dict(signature)
    declared = Signature(inputs=Schema.from_dict(sends), outputs=model.outputs)
    verdict = check_compatibility(declared, model)
    # Fields the application sends but the model does not read are harmless here.
    breaking = [
        r
        for r in verdict.reasons
        if not r.endswith("removed")
        and r.startswith("input")
        and ("required" in r or "retyped" in r)
    ]
    return CheckResult(
        name,
        "schema",
        not breaking,
        "; ".join(breaking) or "the declared schema is compatible",
        "send the fields the model requires with their types" if breaking else None,
    )
