"""The Agent check: thin glue from the Agent to the pipeline and back."""
from __future__ import annotations

from typing import Dict, Optional

from datadog_checks.base import AgentCheck, ConfigurationError

from .applicability import Applicability, ApplicabilityChecker
from .saves import unusable_commands
from .config import InvalidConfiguration, parse_options
from .config_models import ConfigMixin
from .pipeline import InstanceState, Outcome, run_rule
from .report import NAMESPACE, submissions
from .requirements import rule_for_family
from .results import RuleResult, Status


class LoopbackTrafficCheck(AgentCheck, ConfigMixin):
    __NAMESPACE__ = NAMESPACE

    def __init__(self, name, init_config, instances):
        super().__init__(name, init_config, instances)
        try:
            self.options = parse_options(self.instance)
        except InvalidConfiguration as error:
            raise ConfigurationError(str(error))
        self.applicability = ApplicabilityChecker(self.options)
        self.state = InstanceState()
        self.check_initializations.append(self._check_commands)
        # What was last logged per family, so that a lasting problem is logged once, not every run.
        self._last_state: Dict[str, str] = {}

    def load_configuration_models(self, package_path=None):
        # The package is importable as datadog_checks.loopback_traffic and, from a source tree, as
        # loopback_traffic: find the models next to this module either way.
        super().load_configuration_models(package_path or '{}.config_models'.format(__package__))

    def _check_commands(self) -> None:
        for deprecation in self.options.deprecations:
            self.log.warning('loopback_traffic: %s', deprecation)
        for problem in unusable_commands(self.options):
            self.log.warning('loopback_traffic: %s; the check reports UNKNOWN until it is installed or configured', problem)

    def check(self, _):
        for family in self.options.families:
            outcome = self._run(family)
            self._log_change(family, outcome)
            report = submissions(outcome, self.options.partial, self.options.tags)
            for gauge in report.gauges:
                self.gauge(gauge.name, gauge.value, tags=list(gauge.tags))
            for service_check in report.service_checks:
                self.service_check(service_check.name, service_check.status, tags=list(service_check.tags), message=service_check.message)

    def _run(self, family: str) -> Outcome:
        try:
            return run_rule(self.options, family, self.applicability, state=self.state)
        except Exception as error:  # a bug must not stop the other family or crash the Agent
            self.log.exception('loopback_traffic: unexpected error while evaluating %s', family)
            rule = rule_for_family(family)
            result = RuleResult(rule, Status.UNKNOWN, error='internal error: {!r}'.format(error), mode=self.options.mode)
            return Outcome(rule, Applicability(True, 'unknown'), result, 0.0)

    def _log_change(self, family: str, outcome: Outcome) -> None:
        result: Optional[RuleResult] = outcome.result
        if result is None:
            state = outcome.applicability.reason
        elif result.status is Status.UNKNOWN:
            state = 'UNKNOWN: {}'.format(result.error)
        else:
            state = 'evaluated'
        previous = self._last_state.get(family)
        if state == previous:
            return
        self._last_state[family] = state
        if state.startswith('UNKNOWN'):
            self.log.warning('%s %s', outcome.rule.name, state)
        elif result is None:
            self.log.info('%s %s', outcome.rule.name, state)
        elif previous is not None:
            self.log.info('%s can be evaluated again', outcome.rule.name)
