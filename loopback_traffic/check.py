"""The Agent check: thin glue from the Agent to the pipeline and back. Every word it sends or logs about
a result is written in :mod:`.report`."""
from __future__ import annotations

import datetime
import time
from typing import Any, Dict, Optional, Set

from datadog_checks.base import AgentCheck, ConfigurationError
from datadog_checks.base.agent import datadog_agent

from .applicability import Applicability, ApplicabilityChecker
from .config import InvalidConfiguration, parse_options
from .config_models import ConfigMixin
from .pipeline import InstanceState, Outcome, RuleOutcome, families_to_evaluate, run_definition
from .waivers import Applied
from .report import NAMESPACE, RuleState, apply_waivers, change, expired_waiver_log, submissions
from .requirements import RuleDefinition, rule_named
from .results import RuleResult, Status
from .saves import unusable_commands


class LoopbackTrafficCheck(AgentCheck, ConfigMixin):
    __NAMESPACE__ = NAMESPACE

    def __init__(self, name: str, init_config: Any, instances: Any) -> None:
        super().__init__(name, init_config, instances)
        try:
            self.options = parse_options(self.instance, default_proc_path=datadog_agent.get_config('procfs_path') or None)
        except InvalidConfiguration as error:
            raise ConfigurationError(str(error))
        self.applicability = ApplicabilityChecker(self.options)
        self.state = InstanceState()
        self.check_initializations.append(self._check_commands)
        # Per rule: what was last reported (a lasting state is logged once) and the status of the last
        # event sent (one event per status change).
        self._last_state: Dict[str, RuleState] = {}
        self._event_statuses: Dict[str, int] = {}
        self._expired_warned: Set[int] = set()

    def load_configuration_models(self, package_path: Optional[str] = None) -> None:
        # The package is importable as datadog_checks.loopback_traffic and, from a source tree, as
        # loopback_traffic: find the models next to this module either way.
        super().load_configuration_models(package_path or '{}.config_models'.format(__package__))  # type: ignore[no-untyped-call]

    def _check_commands(self) -> None:
        for deprecation in self.options.deprecations:
            self.log.warning('loopback_traffic: %s', deprecation)
        for problem in unusable_commands(self.options):
            self.log.warning('loopback_traffic: %s; the check reports UNKNOWN until it is installed or configured', problem)

    def cancel(self) -> None:
        """The Agent unschedules the check: the nf_tables change watch's socket is closed."""
        self.state.kernel.close()

    def today(self) -> datetime.date:
        """The date waivers are judged on (UTC)."""
        return datetime.datetime.now(datetime.timezone.utc).date()

    def check(self, _: Any) -> None:
        today = self.today()
        self._warn_expired(today)
        hostname = datadog_agent.get_hostname() or ''
        for name in self.options.rules:
            outcome = self._run(rule_named(name))
            applied = {part.rule.family: apply_waivers(part.result, self.options.waivers, today) for part in outcome.parts}
            report = submissions(outcome, self.options.partial, self.options.tags, applied)
            for gauge in report.gauges:
                self.gauge(gauge.name, gauge.value, tags=list(gauge.tags))
            for service_check in report.service_checks:
                self.service_check(service_check.name, service_check.status, tags=list(service_check.tags), message=service_check.message)  # type: ignore[arg-type]  # None: no message
            self._report_change(outcome, applied, hostname)

    def _report_change(self, outcome: RuleOutcome, applied: Dict[str, Applied], hostname: str) -> None:
        rule = outcome.definition.name
        found = change(
            outcome, self.options.partial, applied, self._last_state.get(rule), self._event_statuses.get(rule), hostname, self.options.tags
        )
        self._last_state[rule] = found.state
        if found.log is not None:
            self.log.log(found.log_level, '%s', found.log)
        if found.event is not None and found.state.status is not None:
            self.event(found.event.payload(time.time()))
            self._event_statuses[rule] = found.state.status

    def _warn_expired(self, today: datetime.date) -> None:
        for waiver in self.options.waivers:
            if waiver.expired(today) and waiver.index not in self._expired_warned:
                self._expired_warned.add(waiver.index)
                self.log.warning('loopback_traffic: %s', expired_waiver_log(waiver))

    def _run(self, definition: RuleDefinition) -> RuleOutcome:
        try:
            return run_definition(self.options, definition, self.applicability, state=self.state)
        except Exception as error:  # a bug must not stop the other rules or crash the Agent
            self.log.exception('loopback_traffic: unexpected error while evaluating %s', definition.name)
            parts = []
            for family in families_to_evaluate(self.options, definition):
                rule = definition.part(family)
                result: Optional[RuleResult] = RuleResult(rule, Status.UNKNOWN, error='internal error: {!r}'.format(error), mode=self.options.mode)
                parts.append(Outcome(rule, Applicability(True, 'unknown'), result, 0.0))
            return RuleOutcome(definition, tuple(parts))
