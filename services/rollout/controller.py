"""The rollout controller: one per cluster, the one owner of the loop from candidate to production.

A named, detached Ray actor (``rollout-controller`` in namespace ``rts``), made by the first
gateway replica that looks for it (``ensure_controller``). Every gateway replica reports what it
saw of each live version (``report``); feedback is joined to the logged predictions here
(``feedback``). Once a second, for each model, it reads the stages and the policy, judges the
version on its way to production against production over the same period
(``services.rollout.evaluation``), moves it on (candidate -> shadow -> canary steps -> production),
holds it, or rolls it back the moment an SLO breaks, and writes the routing table the gateways
follow. Every decision is recorded in the registry's stages (with the numbers that decided it),
counted in Prometheus, logged, traced (``rollout.decision``) and kept in a timeline
(``status``) that load-test reports plot.

Operators act through it too (``promote``, ``rollback``, ``set_policy``, ``set_fault``: the admin
API), so decisions never interleave. The prediction log is bounded and kept in the data bucket
(``models/<model>/predictions/``, ``models/<model>/feedback/``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import ray

from services.modelkit import ModelPackage
from services.modelkit.discovery import load_models
from services.registry.publish import Registry
from services.registry.stages import STAGES, StageBook
from services.rollout.evaluation import Verdict, Window, best_probability, evaluate
from services.rollout.labelled import target_of, trainable_shape, write_file
from services.rollout.policy import Policy, load_policy, package_policy_file, save_policy
from services.rollout.routing import (ABRoute, BanditRoute, CanaryRoute, Fault, RoutingTable, ShadowRoute, read_table,
                                      write_table)
from services.settings import get_settings
from services.telemetry import metrics
from services.telemetry.tracing import configure_tracing, span
from services.triton.client import TritonClient

log = logging.getLogger("rollout")

NAME, NAMESPACE = "rollout-controller", "rts"
PREDICTION_LOG = 50_000  # per model, in memory
PENDING_FEEDBACK_S = 60.0
SEGMENTS_KEPT = 50
FEEDBACK_FILE_ROWS = 500  # labelled feedback rows per training-data file ...
FEEDBACK_FILE_MAX_AGE_S = 300.0  # ... or fewer, once the oldest has waited this long
UNLOAD_GRACE_S = 30.0  # a retired version stays loaded this long at least (requests on their way)
BY = "rollout-controller"


def state_key(model: str) -> str:
    return f"models/{model}/rollout.json"


@dataclass
class Joined:
    model: str
    version: str
    rows: int
    correct: int | None
    abs_error: float | None


class Controller:
    """The loop itself, with no Ray in it (tests drive it directly); ``RolloutController`` hosts it."""

    def __init__(self, registry: Registry, models: dict[str, ModelPackage]) -> None:
        self.registry, self.models = registry, models
        self.records = registry.records
        self.windows: dict[tuple[str, str], Window] = {}
        self.evidence_since: dict[tuple[str, str], float] = {}  # feedback on predictions before this is not counted
        self.predictions: dict[str, OrderedDict[str, tuple]] = {m: OrderedDict() for m in models}
        self.unsaved: dict[str, list] = {m: [] for m in models}
        self.joined_unsaved: dict[str, list] = {m: [] for m in models}
        self.pending: OrderedDict[str, tuple] = OrderedDict()  # request id -> (truth, model, received at)
        self.joined_ids: OrderedDict[str, None] = OrderedDict()  # feedback counts once per request
        self.bandit: dict[str, dict[str, list[int]]] = {m: {} for m in models}  # version -> [successes, failures]
        self.faults: dict[str, dict[int, Fault]] = {m: {} for m in models}
        self.timeline: dict[str, deque] = {m: deque(maxlen=7200) for m in models}
        self.decisions: dict[str, deque] = {m: deque(maxlen=200) for m in models}
        self.retired_at: dict[tuple[str, int], float] = {}
        self.known_shares: dict[str, set[str]] = {m: set() for m in models}
        self.state: dict[str, dict] = {m: self.records.get_json(state_key(m)) or {} for m in models}
        self.policies: dict[str, Policy] = {}  # as read by the last tick: feedback never waits on storage
        # Feedback as training data, for the models whose input rows can be trained on (labelled.py).
        self.trainable = {m: trainable_shape(p) for m, p in models.items()}
        self.labelled: dict[str, list[tuple[np.ndarray, list]]] = {m: [] for m in models}
        self.labelled_since: dict[str, float] = {m: time.time() for m in models}

    # ---- evidence in -----------------------------------------------------------------------------
    def window(self, model: str, version: str) -> Window:
        key = (model, str(version))
        if key not in self.windows:
            self.windows[key] = Window()
        return self.windows[key]

    def report(self, snapshot: dict) -> None:
        for model, versions in (snapshot.get("versions") or {}).items():
            if model not in self.models:
                continue
            for version, stats in versions.items():
                self.window(model, version).add(stats)
        for model, versions in (snapshot.get("drift") or {}).items():
            for version, psi in versions.items():
                if model in self.models:
                    self.window(model, version).drift_psi = psi
        for request_id, model, version, predicted, at, *rest in snapshot.get("predictions") or ():
            if model not in self.models:
                continue
            rows = rest[0] if rest else None
            log_ = self.predictions[model]
            log_[request_id] = (version, predicted, at, rows)
            if len(log_) > PREDICTION_LOG:
                log_.popitem(last=False)
            self.unsaved[model].append({"request_id": request_id, "version": version, "predicted": predicted,
                                        "at": at})
            if request_id in self.pending:
                truth, _, _ = self.pending.pop(request_id)
                try:
                    self._join(model, request_id, version, predicted, truth, at, rows)
                except ValueError as exc:  # one bad feedback never costs the rest of the report
                    log.warning("feedback for %s not joined: %s", request_id, exc)
                    metrics.record_feedback(model, "invalid")

    def feedback(self, request_id: str, truth: Any, model: str | None = None, record: tuple | None = None) -> dict:
        """Join the truth to a logged prediction; unknown ids wait a minute for their prediction to arrive.
        Feedback for a request already joined (a client's retry) is not counted again."""
        if request_id in self.joined_ids:
            return {"status": "duplicate", "request_id": request_id,
                    "detail": "feedback for this request was joined already; it counts once"}
        if record is not None:
            model, version, predicted, at = record[:4]
            rows = record[4] if len(record) > 4 else None
        else:
            found = [(m, log_[request_id]) for m, log_ in self.predictions.items()
                     if (model is None or m == model) and request_id in log_]
            if not found:
                self.pending[request_id] = (truth, model, time.time())
                metrics.record_feedback(model or "", "pending")
                return {"status": "pending", "request_id": request_id,
                        "detail": "no prediction with this request id has reached the controller yet; the "
                                  f"feedback waits {PENDING_FEEDBACK_S:.0f} s for it"}
            model, entry = found[0]
            version, predicted, at = entry[:3]
            rows = entry[3] if len(entry) > 3 else None
        joined = self._join(model, request_id, version, predicted, truth, at, rows)
        return {"status": "joined", "request_id": request_id, "model": model, "version": version,
                "rows": joined.rows, "correct": joined.correct, "abs_error": joined.abs_error}

    def _join(self, model: str, request_id: str, version: str, predicted: list, truth: Any,
              predicted_at: float, rows: Any = None) -> Joined:
        """Counts toward the version's live accuracy and the bandit's rewards only when the prediction was made
        in the version's current window: both sides of a comparison are judged over the same period. With the
        rows the model was given, the truth also becomes training data (``services.rollout.labelled``)."""
        package = self.models[model]
        truths = truth if isinstance(truth, list) else [truth]
        if len(truths) != len(predicted):
            raise ValueError(f"request {request_id} predicted {len(predicted)} rows; the feedback has {len(truths)}")
        targets = [target_of(package, t) for t in truths]  # a label the model does not have is refused here
        self.joined_ids[request_id] = None
        if len(self.joined_ids) > PREDICTION_LOG * len(self.models):
            self.joined_ids.popitem(last=False)
        window = self.window(model, version)
        counts = self.bandit[model].setdefault(version, [0, 0])
        current = predicted_at >= self.evidence_since.get((model, str(version)), 0.0)
        correct, errors = 0, []
        for p, t in zip(predicted, truths):
            if package.task.kind == "classification":
                right = str(p) == str(t)
                correct += right
                reward = right
            else:
                error = abs(float(p) - float(t))
                errors.append(error)
                policy = self.policies.get(model) or Policy()
                reward = error <= policy.bandit.reward_tolerance * max(abs(float(t)), 1e-9)
            if current:
                window.add_feedback(right if package.task.kind == "classification" else None,
                                    None if package.task.kind == "classification" else error)
                counts[0 if reward else 1] += 1
        self.joined_unsaved[model].append({"request_id": request_id, "version": version, "predicted": predicted,
                                           "truth": truths, "at": time.time()})
        shape = self.trainable.get(model)
        if rows is not None and shape is not None and len(rows) == len(targets):
            self.labelled[model].append((np.asarray(rows).reshape(len(targets), *shape), targets))
        metrics.record_feedback(model, "joined")
        kind = package.task.kind
        return Joined(model, version, len(truths), correct if kind == "classification" else None,
                      round(sum(errors) / len(errors), 6) if errors else None)

    def expire_pending(self) -> None:
        cutoff = time.time() - PENDING_FEEDBACK_S
        while self.pending and next(iter(self.pending.values()))[2] < cutoff:
            _, (_, model, _) = self.pending.popitem(last=False)
            metrics.record_feedback(model or "", "expired")

    # ---- policy and stages -----------------------------------------------------------------------
    def policy(self, model: str) -> Policy:
        try:
            policy = load_policy(self.models[model], self.records)
        except ValueError:  # written around the API: the package's own policy, else the default
            log.exception("the stored policy of %s is invalid; using the package's", model)
            path = package_policy_file(self.models[model])
            policy = Policy.parse(path.read_text()) if path.exists() else Policy()
        self.policies[model] = policy
        return policy

    def _record(self, model: str, version: int, decision: str, reasons: list[str], numbers: dict,
                frm: str | None, to: str | None) -> None:
        entry = {"at": time.time(), "version": version, "decision": decision, "from": frm, "to": to,
                 "reasons": reasons, "numbers": numbers}
        self.decisions[model].append(entry)
        metrics.record_rollout_decision(model, decision)
        log.info("%s version %s: %s (%s -> %s): %s %s", model, version, decision, frm, to, "; ".join(reasons),
                 json.dumps(numbers, default=str))
        with span("rollout.decision", {"rts.model": model, "rts.model_version": str(version),
                                       "rts.decision": decision, "rts.from": frm or "", "rts.to": to or "",
                                       "rts.reasons": "; ".join(reasons)}):
            pass

    def _restart_windows(self, model: str, *versions: int | None) -> None:
        """Evidence starts again for these versions: windows, and the bandit's rewards (both arms are judged
        over the same period; production's long history would otherwise drown a newcomer)."""
        for version in versions:
            if version is not None:
                self.windows[(model, str(version))] = Window()
                self.bandit[model][str(version)] = [0, 0]
                self.evidence_since[(model, str(version))] = time.time()

    def _set_state(self, model: str, **state: Any) -> None:
        self.state[model] = {**state, "since": time.time()}
        self.records.put_json(state_key(model), self.state[model])

    # ---- the loop --------------------------------------------------------------------------------
    def tick(self, model: str) -> RoutingTable:
        """One look at a model: decide, act, and write the routing table. Returns the table."""
        package = self.models[model]
        book = self.registry.stages(model)
        policy = self.policy(model)
        if book.challengers and book.production is None:  # no production yet: the newest candidate becomes it
            self._promote(model, package, book.challengers[-1], ["no production version to compare with"], {})
            book = self.registry.stages(model)
        if book.challengers:
            newest = book.challengers[-1]
            # Only the newest version on its way goes on; older ones (and any older than production, which an
            # operator promoted past them) are superseded.
            for older in [v for v in book.challengers if v != newest or v < (book.production or 0)]:
                transition = self.registry.retire(model, package.family, older, by=BY,
                                                  reason=f"superseded by version {max(newest, book.production or 0)}")
                self._retired(model, older, "superseded", [transition["reason"]], {})
            book = self.registry.stages(model)
            if book.challengers:
                self._advance(model, package, book, policy, book.challengers[-1])
        table = self._publish_table(model, policy)  # the gateways follow a decision at once ...
        if not self.registry.stages(model).challengers:
            # ... and only then, in a quiet moment (nothing being judged), Triton drops retired versions:
            # reloading a member's versions takes seconds, and no decision should wait on it.
            self._housekeeping(model, package)
        return table

    def _advance(self, model: str, package: ModelPackage, book: StageBook, policy: Policy, version: int) -> None:
        stage = book.stage(version)
        production = book.production
        strategy = policy.strategy
        state = self.state.get(model) or {}
        if state.get("version") != version or state.get("stage") != stage:
            self._restart_windows(model, version, production)
            self._set_state(model, version=version, stage=stage, step=0)
            state = self.state[model]
        kind = package.task.kind

        if stage == "candidate":
            if strategy == "direct":
                return self._promote(model, package, version, ["the policy is direct"], {})
            if strategy == "manual":
                return
            if strategy in ("progressive", "blue_green") and (policy.shadow.share > 0 or strategy == "blue_green"):
                return self._move(model, version, "shadow", ["candidate enters the shadow stage"], {})
            return self._move(model, version, "canary", [f"candidate goes live ({strategy})"], {})

        candidate, base = self.window(model, str(version)), self.window(model, str(production))
        if stage == "shadow" and strategy == "direct":  # the policy changed while it was in shadow
            return self._promote(model, package, version, ["the policy is direct"], {})
        if stage == "shadow" and (strategy in ("ab", "bandit") or (strategy == "progressive" and
                                                                  policy.shadow.share == 0)):
            return self._move(model, version, "canary", [f"the {strategy} policy has no shadow stage"], {})
        if stage == "shadow":
            verdict = evaluate("shadow", candidate, base, policy.slo, kind)
            if verdict.action == "rollback":
                return self._rollback(model, package, version, verdict)
            if verdict.action == "advance":
                if strategy == "blue_green":
                    if policy.blue_green.auto_switch:
                        return self._promote(model, package, version, ["shadow SLOs hold: blue-green switch"],
                                             verdict.numbers)
                    return self._hold(model, version, ["shadow SLOs hold; waiting for an operator to switch"], verdict)
                if strategy == "progressive":
                    return self._move(model, version, "canary", ["shadow SLOs hold"], verdict.numbers)
            return self._hold(model, version, verdict.reasons, verdict)

        if stage == "canary":
            judge = strategy == "progressive"
            verdict = evaluate("canary", candidate, base, policy.slo, kind, judge_accuracy=judge)
            if verdict.action == "rollback":
                return self._rollback(model, package, version, verdict)
            if strategy == "bandit":
                return self._bandit(model, package, version, policy, verdict)
            if strategy != "progressive" or verdict.action != "advance":
                return self._hold(model, version, verdict.reasons, verdict)
            step = int(state.get("step", 0))
            if step + 1 < len(policy.canary.steps):
                self._record(model, version, "canary_step", [f"canary step {step + 1} SLOs hold"], verdict.numbers,
                             "canary", "canary")
                self.registry.move(model, version, "canary", by=BY, reason=f"canary step {step + 2} of "
                                   f"{len(policy.canary.steps)}", numbers=verdict.numbers)
                self._restart_windows(model, version, production)
                self._set_state(model, version=version, stage="canary", step=step + 1)
                return
            return self._promote(model, package, version, ["every canary step held its SLOs"], verdict.numbers)

    def _bandit(self, model: str, package: ModelPackage, version: int, policy: Policy, verdict: Verdict) -> None:
        book = self.registry.stages(model)
        live = [book.production, *book.in_stage("canary")]
        counts = {str(v): self.bandit[model].get(str(v), [0, 0]) for v in live}
        conf = policy.bandit.promote_confidence
        enough = all(sum(c) >= max(policy.slo.min_feedback, 1) for c in counts.values())
        if conf is not None and enough:
            best = best_probability({v: (1 + c[0], 1 + c[1]) for v, c in counts.items()})
            winner = max(best, key=best.get)
            numbers = {"p_best": best, "rewards": counts}
            if best[winner] >= conf and int(winner) == version and verdict.action == "advance":
                return self._promote(model, package, version, [f"the bandit's best with P={best[winner]:.3f}"],
                                     numbers)
            if best[winner] >= conf and int(winner) == book.production:
                return self._rollback(model, package, version,
                                      Verdict("rollback", [f"production is the bandit's best with "
                                                           f"P={best[winner]:.3f}"], numbers))
        self._hold(model, version, verdict.reasons + [f"bandit rewards {counts}"], verdict)

    def _hold(self, model: str, version: int, reasons: list[str], verdict: Verdict | None) -> None:
        self.state.setdefault(model, {})["holding"] = {"reasons": reasons, "numbers": verdict.numbers if verdict else {}}

    def _move(self, model: str, version: int, to: str, reasons: list[str], numbers: dict) -> None:
        frm = self.registry.stages(model).stage(version)
        self.registry.move(model, version, to, by=BY, reason="; ".join(reasons), numbers=numbers)
        self._record(model, version, f"to_{to}", reasons, numbers, frm, to)
        production = self.registry.stages(model).production
        self._restart_windows(model, version, production)
        self._set_state(model, version=version, stage=to, step=0)

    def _promote(self, model: str, package: ModelPackage, version: int, reasons: list[str], numbers: dict) -> None:
        frm = self.registry.stages(model).stage(version)
        self.registry.promote(model, package.family, version, by=BY, reason="; ".join(reasons), numbers=numbers)
        self._record(model, version, "promote", reasons, numbers, frm, "production")
        metrics.set_served_version(model, version)
        self._restart_windows(model, version)
        self._set_state(model, version=None, stage=None, step=0)

    def _rollback(self, model: str, package: ModelPackage, version: int, verdict: Verdict) -> None:
        frm = self.registry.stages(model).stage(version)
        self.registry.retire(model, package.family, version, by=BY, reason="; ".join(verdict.reasons),
                             numbers=verdict.numbers)
        self._retired(model, version, "rollback", verdict.reasons, verdict.numbers, frm)

    def _retired(self, model: str, version: int, decision: str, reasons: list[str], numbers: dict,
                 frm: str | None = None) -> None:
        self._record(model, version, decision, reasons, numbers, frm, "archived")
        self.retired_at[(model, version)] = time.time()
        self._set_state(model, version=None, stage=None, step=0)

    def _housekeeping(self, model: str, package: ModelPackage) -> None:
        """Let Triton drop retired versions once no request can still be on its way to them."""
        now = time.time()
        mine = {v: at for (m, v), at in self.retired_at.items() if m == model}
        due = [v for v, at in mine.items() if now - at > UNLOAD_GRACE_S]
        if not due or self.registry.triton is None:
            return
        try:
            self.registry.unload_retired(model, package.family, keep=[v for v in mine if v not in due])
        except Exception:  # noqa: BLE001 - Triton away: try again next time
            log.exception("could not unload retired versions of %s", model)
            return
        for version in due:
            self.retired_at.pop((model, version), None)

    # ---- what the gateways follow ------------------------------------------------------------------
    def routing(self, model: str, policy: Policy) -> RoutingTable:
        book = self.registry.stages(model)
        state = self.state.get(model) or {}
        table = RoutingTable(model=model, strategy=policy.strategy, production=book.production,
                             faults=dict(self.faults[model]))
        shadows, canaries = book.in_stage("shadow"), book.in_stage("canary")
        if shadows:
            table.shadow = ShadowRoute(version=shadows[-1], share=policy.shadow.share or 1.0,
                                       max_in_flight=policy.shadow.max_in_flight,
                                       tolerance=policy.slo.disagreement_tolerance)
        if canaries:
            version = canaries[-1]
            if policy.strategy == "ab":
                cohorts = {}
                for cohort, target in policy.ab.cohorts.items():
                    if target == "challenger":
                        cohorts[cohort] = version
                    elif target == "production" and book.production is not None:
                        cohorts[cohort] = book.production
                    elif target.isdigit():
                        cohorts[cohort] = int(target)
                table.ab = ABRoute(header=policy.ab.header.lower(), cohorts=cohorts)
            elif policy.strategy == "bandit":
                live = [book.production, *canaries]
                table.bandit = BanditRoute(posteriors={
                    v: tuple(1.0 + x for x in self.bandit[model].get(str(v), [0, 0])) for v in live},
                    explore_floor=policy.bandit.explore_floor)
            else:
                steps = policy.canary.steps
                weight = steps[min(int(state.get("step", 0)), len(steps) - 1)]
                table.canary = CanaryRoute(version=version, weight=weight,
                                           sticky_header=policy.canary.sticky_header.lower())
        return table

    def _publish_table(self, model: str, policy: Policy) -> RoutingTable:
        table = self.routing(model, policy)
        current = read_table(self.records, model)
        if current is not None:
            same = current.model_dump(exclude={"revision"}) == table.model_dump(exclude={"revision"})
            table.revision = current.revision if same else current.revision + 1
        if current is None or table.revision != current.revision:
            write_table(self.records, table)
        self._observe(model, table)
        return table

    def _observe(self, model: str, table: RoutingTable) -> None:
        shares = table.shares()
        metrics.set_traffic_shares(model, shares, self.known_shares[model])
        self.known_shares[model] = {str(v) for v in shares} | self.known_shares[model]
        book = self.registry.stages(model)
        for version, stage in book.versions.items():
            if stage != "archived" or str(version) in self.known_shares[model]:
                metrics.set_version_stage(model, version, stage, STAGES)
        point: dict[str, Any] = {"t": time.time(), "production": table.production,
                                 "shares": {str(v): round(s, 4) for v, s in shares.items()}, "versions": {}}
        watched = {str(v) for v in shares}
        if table.shadow is not None:
            watched.add(str(table.shadow.version))
        for version in sorted(watched):
            summary = self.window(model, version).summary()
            point["versions"][version] = summary
            disagreement = (summary["shadow_disagreements"] / summary["shadow_requests"]
                            if summary["shadow_requests"] else None)
            metrics.set_live_quality(model, version, summary.get("accuracy") if self.models[model].task.kind ==
                                     "classification" else summary.get("mean_abs_error"), disagreement)
        self.timeline[model].append(point)

    # ---- operators ---------------------------------------------------------------------------------
    def promote(self, model: str, version: int | None, by: str) -> dict:
        package = self.models[model]
        book = self.registry.stages(model)
        target = version if version is not None else (book.challengers[-1] if book.challengers else None)
        if target is None:
            raise ValueError(f"{model} has no candidate to promote; name a version")
        frm = book.stage(target)
        seconds = self.registry.promote(model, package.family, target, by=by, reason=f"promoted by {by}")
        self._record(model, target, "promote", [f"by {by}"], {}, frm, "production")
        self._set_state(model, version=None, stage=None, step=0)
        self._publish_table(model, self.policy(model))
        return {"model": model, "production": target, "seconds": round(seconds, 3)}

    def rollback(self, model: str, version: int | None, by: str) -> dict:
        package = self.models[model]
        before = self.registry.stages(model)
        result = self.registry.rollback(model, package.family, version, by=by, reason=f"rollback by {by}")
        for retired in result.get("retired", []):
            self._retired(model, retired, "rollback", [f"by {by}"], {}, before.stage(retired))
        if "production" in result and result.get("retired") is None:
            self._record(model, result["production"], "rollback", [f"by {by}"], {},
                         before.stage(result["production"]), "production")
        self._set_state(model, version=None, stage=None, step=0)
        self._publish_table(model, self.policy(model))
        return {"model": model, **result}

    def set_policy(self, model: str, text: str, by: str) -> dict:
        policy = Policy.parse(text)
        save_policy(model, policy, self.records)
        self.policies[model] = policy
        self._record(model, 0, "policy", [f"set by {by}: {policy.strategy}"], {}, None, None)
        self._publish_table(model, policy)
        return policy.model_dump(mode="json")

    def set_fault(self, model: str, version: int, fault: dict, by: str) -> dict:
        parsed = Fault.model_validate(fault)
        if parsed.latency_ms == 0 and parsed.error_rate == 0:
            self.faults[model].pop(version, None)
        else:
            self.faults[model][version] = parsed
        self._record(model, version, "fault", [f"set by {by}: {parsed.model_dump()}"], {}, None, None)
        self._publish_table(model, self.policy(model))
        return {"model": model, "version": version, **parsed.model_dump()}

    def status(self, model: str, timeline: int = 0) -> dict:
        book = self.registry.stages(model)
        table = read_table(self.records, model)
        return {"model": model, "production": book.production, "challengers": book.challengers,
                "stages": {str(v): s for v, s in sorted(book.versions.items())},
                "policy": self.policy(model).model_dump(mode="json"), "state": self.state.get(model) or {},
                "routing": table.model_dump(mode="json") if table else None,
                "windows": {v: w.summary() for (m, v), w in self.windows.items() if m == model},
                "decisions": list(self.decisions[model])[-20:],
                "timeline": list(self.timeline[model])[-timeline:] if timeline else []}

    # ---- the log kept through the storage port ----------------------------------------------------------
    def flush_logs(self) -> None:
        """The prediction and feedback logs (bounded), and labelled feedback as dataset files (kept, like data)."""
        for model in self.models:
            waiting = sum(len(t) for _, t in self.labelled[model])
            if waiting >= FEEDBACK_FILE_ROWS or (waiting and time.time() - self.labelled_since[model] >
                                                 FEEDBACK_FILE_MAX_AGE_S):
                batches, self.labelled[model] = self.labelled[model], []
                self.labelled_since[model] = time.time()
                key = write_file(self.records.store, model, np.concatenate([r for r, _ in batches]),
                                 np.asarray([t for _, ts in batches for t in ts]))
                log.info("%s: %d rows of feedback written as training data (%s)", model, waiting, key)
            for kind, buffer in (("predictions", self.unsaved), ("feedback", self.joined_unsaved)):
                rows, buffer[model] = buffer[model], []
                if not rows:
                    continue
                prefix = f"models/{model}/{kind}/"
                # Sorted by time, unique per flush: the oldest segments are the ones dropped.
                key = f"{prefix}{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns()}-{os.getpid()}.jsonl"
                self.records.store.put_bytes(key, "".join(json.dumps(r, default=str) + "\n" for r in rows).encode())
                segments = sorted(o.key for o in self.records.store.list(prefix))
                for old in segments[:-SEGMENTS_KEPT]:
                    self.records.store.delete(old)


# The head node's own resource, as Serve pins its controller: the cluster's one controller lives on the head, never on
# a worker node the autoscaler would then never find idle (a live actor keeps its node busy) or could take away.
ON_HEAD = {"node:__internal_head__": 0.001}


@ray.remote(num_cpus=0, max_restarts=-1, resources=ON_HEAD)
class RolloutController:
    """The Ray actor hosting ``Controller``: a tick per second per model, calls served between ticks."""

    def __init__(self, tick_s: float = 1.0) -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        configure_tracing("rts-rollout")
        metrics.configure_metrics("ray")
        settings = get_settings()
        self.controller = Controller(Registry.open(settings, TritonClient(settings.triton.grpc_address)),
                                     load_models(settings))
        self.tick_s = tick_s
        self.lock = asyncio.Lock()  # one decision at a time: ticks, operators, and a run going live
        self.paused_by: str | None = None
        self.loop_task: asyncio.Task | None = None
        self.last_flush = time.monotonic()

    async def start(self) -> bool:
        if self.loop_task is None or self.loop_task.done():
            self.loop_task = asyncio.get_running_loop().create_task(self._loop())
        return True

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            for model in list(self.controller.models):
                try:
                    async with self.lock:
                        await asyncio.to_thread(self.controller.tick, model)
                except Exception:  # one model's trouble (Triton away) never stops the others' loop
                    log.exception("rollout tick of %s failed", model)
            self.controller.expire_pending()
            if time.monotonic() - self.last_flush > 10:
                self.last_flush = time.monotonic()
                try:
                    await asyncio.to_thread(self.controller.flush_logs)
                except Exception:
                    log.exception("could not keep the prediction log")
            await asyncio.sleep(max(0.0, self.tick_s - (time.monotonic() - started)))

    async def pause(self, holder: str, lease_s: float = 300.0) -> bool:
        """Hold every decision (ticks, operators) while `holder` (a retraining run) loads a version beside
        the live ones and adds it to the stages; released by ``resume``, or by itself after `lease_s`."""
        await self.lock.acquire()
        self.paused_by = holder

        async def expire() -> None:
            await asyncio.sleep(lease_s)
            if self.paused_by == holder:
                log.warning("%s held the rollout for %.0f s without resuming it; resuming", holder, lease_s)
                await self.resume(holder)

        asyncio.get_running_loop().create_task(expire())
        return True

    async def resume(self, holder: str) -> bool:
        if self.paused_by != holder:
            return False
        self.paused_by = None
        self.lock.release()
        return True

    async def report(self, snapshot: dict) -> None:
        self.controller.report(snapshot)

    async def feedback(self, request_id: str, truth: Any, model: str | None = None, record: tuple | None = None) -> dict:
        return self.controller.feedback(request_id, truth, model, record)

    async def status(self, model: str, timeline: int = 0) -> dict:
        return await asyncio.to_thread(self.controller.status, model, timeline)

    async def promote(self, model: str, version: int | None, by: str) -> dict:
        async with self.lock:
            return await asyncio.to_thread(self.controller.promote, model, version, by)

    async def rollback(self, model: str, version: int | None, by: str) -> dict:
        async with self.lock:
            return await asyncio.to_thread(self.controller.rollback, model, version, by)

    async def set_policy(self, model: str, text: str, by: str) -> dict:
        async with self.lock:
            return await asyncio.to_thread(self.controller.set_policy, model, text, by)

    async def set_fault(self, model: str, version: int, fault: dict, by: str) -> dict:
        async with self.lock:
            return await asyncio.to_thread(self.controller.set_fault, model, version, fault, by)


@contextmanager
def rollout_paused(holder: str) -> Iterator[None]:
    """The cluster's rollout controller makes no decision inside this block (nothing, without one)."""
    try:
        handle = ray.get_actor(NAME, namespace=NAMESPACE) if ray.is_initialized() else None
    except ValueError:  # no controller in this cluster (no gateway has started one)
        handle = None
    if handle is None:
        yield
        return
    ray.get(handle.pause.remote(holder), timeout=120)
    try:
        yield
    finally:
        ray.get(handle.resume.remote(holder), timeout=60)


def ensure_controller() -> Any:
    """The cluster's controller (made if there is none yet), started."""
    handle = RolloutController.options(name=NAME, namespace=NAMESPACE, get_if_exists=True,
                                       lifetime="detached").remote()
    handle.start.remote()
    return handle
