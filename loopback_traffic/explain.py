"""``--explain REQUIREMENT``: the effective walk of one requirement, chain by chain, rule by rule.

Built from the evaluator's own building blocks, never a walk of its own: the requirement is
evaluated by :func:`.evaluator._evaluate_requirement_effective` with a trace of its chain walks
(each base chain's result, the class it was entered with, and the walker that holds every chain's
view, the relation of each rule reached to the packets reaching it, and summary). The text narrates
those views forwards; the deciding rules, the deviations and the results are the evaluator's, so the
explanation cannot disagree with the verdict. Pure: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from .classify import ALL, NONE, Relation
from .collect import Collected
from .config import Options
from .evaluator import (
    EFFECTIVE,
    Source,
    entry_class,
    Unevaluable,
    _PART_VERDICT_TARGETS,
    _VERDICT_TARGETS,
    _ChainWalker,
    _check_incompatible,
    _evaluate_requirement_effective,
    _evaluate_requirement_literal,
    _flatten,
    _HookResult,
    _PathChain,
    _Summary,
    _synproxy,
    _walk_path,
    _Walk,
    evaluate,
    table_name,
)
from .model import Chain, Rule, RulesUnavailable
from .parser import ParseError
from .nf_tables import KernelRuleset
from .pipeline import InstanceState, _empty, _kernel_sources, text_source, walked_sources
from .report import VERDICT_WORDS, describe_position, explanation
from .requirements import DENY, ComplianceRule, Interfaces, PacketClass, Requirement, requirement_named
from .results import Position, RequirementResult, RuleResult, Status

_INDENT = '  '
_RELATION_WIDTH = 4  # 'none', 'some', 'all '


@dataclass(frozen=True)
class Explanation:
    """The text, and the requirement's result it ends with (the evaluator's)."""

    requirement: str
    text: str
    status: Status


def _words(verdict: Optional[str]) -> str:
    return VERDICT_WORDS.get(verdict, verdict) if verdict else 'returned to the caller'


def _rule_text(rule: Rule) -> str:
    text = ' '.join(rule.text.split())
    text = text if len(text) <= 70 else text[:67] + '...'
    return '{} (handle {})'.format(text, rule.handle) if rule.handle else text


def _tag(relation: Optional[Relation]) -> str:
    return '[{}]'.format(relation.value if relation is not None else '-').ljust(_RELATION_WIDTH + 2)


class _Narrator:
    """The lines of one base chain's walk, and of the chains it sends the class to (indented)."""

    def __init__(self, walker: _ChainWalker, required: str) -> None:
        self.walker = walker
        self.required = required
        self.lines: List[str] = []

    def chain(self, chain: Chain, packets: PacketClass, depth: int, deviations: Set[Position]) -> None:
        key = (chain.name, packets)
        view = self.walker.views[key]
        summary = self.walker.summaries[key]
        pad = _INDENT * depth
        decided: Optional[str] = None  # what decided for every packet of the class, once something did
        for index, rule in enumerate(chain.rules):
            here = self.walker.position(chain, index, rule)
            number = '{}{:>3}'.format(pad, index + 1)
            if decided is not None or index >= len(view.relations):
                self.lines.append('{} {} {}  -> not reached: {} decided for all of the class'.format(
                    number, _tag(None), _rule_text(rule), decided or 'an earlier rule'))
                continue
            relation = view.relations[index]
            line = '{} {} {}  -> '.format(number, _tag(relation), _rule_text(rule))
            entered = view.entered[index]
            target = rule.target
            if relation is NONE:
                self.lines.append(line + 'no packet of the class: no effect')
                continue
            part = 'all of the class' if relation is ALL else 'part of the class'
            if entered is not None and target is not None:
                callee = self.walker.called_chain(rule)
                assert callee is not None
                called = self.walker.summaries[(callee.name, entered)]
                how = 'goto' if target.goto else 'jump into'
                self.lines.append(line + '{} {} ({}):'.format(how, callee.name, part))
                self.chain(callee, entered, depth + 1, deviations)
                if relation is ALL and (target.goto or (called.verdict is not None and not called.escapes)):
                    decided = 'rule {} ({} {})'.format(index + 1, how, callee.name)
                continue
            notes: List[str] = []
            if _synproxy(rule):
                denied, what = _PART_VERDICT_TARGETS['SYNPROXY']
                notes.append('{} {} (deviation)'.format(_words(denied), what) if here in deviations else '{} {}'.format(_words(denied), what))
            verdict = _VERDICT_TARGETS.get(target.name) if target is not None else None
            if target is None:
                notes.append('no target: goes on')
            elif verdict is not None:
                if relation is ALL:
                    notes.append('verdict: {} for all of the class'.format(_words(verdict)))
                    decided = 'rule {}'.format(index + 1)
                elif here in deviations:
                    notes.append('partial deviation: {} {}'.format(part, _words(verdict)))
                else:
                    notes.append('{} {}{}'.format(part, _words(verdict), ' (as required)' if verdict == self.required else ''))
            elif target.name == 'RETURN':
                if relation is ALL:
                    notes.append('RETURN for all of the class' + (': policy {}'.format(chain.policy) if chain.is_builtin else ''))
                    decided = 'rule {} (RETURN)'.format(index + 1)
                else:
                    notes.append('RETURN for part of the class' + (' (policy {})'.format(chain.policy) if chain.is_builtin else ''))
            elif not notes:
                notes.append('{}: no verdict, goes on'.format(target.name))
            self.lines.append(line + '; '.join(notes))
        self.lines.append('{}     => {}'.format(pad, self._chain_result(chain, summary, deviations)))

    def _chain_result(self, chain: Chain, summary: _Summary, deviations: Set[Position]) -> str:
        if summary.verdict is None:
            text = 'the class returns to the caller'
        else:
            text = '{} by {}'.format(_words(summary.verdict), self._where(chain, summary.decided_by))
        if summary.escapes and summary.verdict is not None:
            text += '; part of the class returns to the caller (and goes on after the jump)'
        policy = self.walker.policy_position(chain) if chain.is_builtin else None
        if policy is not None and policy in deviations and summary.decided_by != policy:
            text += '; part of the class gets the policy {} (deviation)'.format(chain.policy)
        return text


    def _where(self, chain: Chain, position: Optional[Position]) -> str:
        if position is None:
            return '?'
        if position.table != self.walker.table_name or position.chain != chain.name:
            return describe_position(position)
        return 'its policy' if position.is_policy else 'rule {}'.format(position.index)


def _header(path: _PathChain) -> str:
    base = path.chain.base
    assert base is not None
    where = 'table {}'.format(table_name(path.table))
    if path.source.label:
        where += ' ({} ruleset)'.format(path.source.label)
    devices = ' devices {}'.format(','.join(base.devices)) if base.devices else ''
    return 'chain {} ({}, hook {}{}, priority {}, type {}, policy {})'.format(
        path.chain.name, where, base.hook, devices, base.priority, base.type, path.chain.policy)


def _path_key(path: _PathChain) -> Tuple[int, int, str]:
    return id(path.source), id(path.table), path.chain.name


def _walk_lines(rule: ComplianceRule, requirement: Requirement, sources: Sequence[Source]) -> Tuple[List[str], RequirementResult]:
    result = _evaluate_requirement_effective(rule, requirement, sources, _Walk())
    # The same walk again, traced: the chain results the requirement was combined from (the deny
    # requirement may walk the path twice; the last walk's results are the ones returned).
    packets, paths = entry_class(rule, requirement, sources, _Walk())
    trace: List[Tuple[_HookResult, PacketClass, _ChainWalker]] = []
    final = _walk_path(requirement, packets, paths, _Walk(None, trace=trace))
    traced = {id(entry[0]): entry for entry in trace}
    chain_results = [traced[id(hook_result)] for hook_result in final]
    lines: List[str] = []
    walked = set()
    for hook_result, entered, walker in chain_results:
        path = hook_result.path
        walked.add(_path_key(path))
        lines.append(_header(path))
        narrator = _Narrator(walker, requirement.required)
        deviations = {deviation.where for deviation in _flatten(walker.summaries[(path.chain.name, entered)].devs)}
        narrator.chain(path.chain, entered, 1, deviations)
        lines.extend(narrator.lines)
        if path.partial_because:
            lines.append('{}   (this chain sees only part of the class: {})'.format(_INDENT, path.partial_because))
        lines.append('{}chain result: {} -> {}'.format(_INDENT, _words(hook_result.verdict), hook_result.status.name))
    for path in paths:
        if _path_key(path) not in walked:
            why = 'it sees only part of the class ({}); such chains count only when every other chain fails'.format(
                path.partial_because) if path.partial_because else 'nat chains see only packets that conntrack tracks'
            lines.append('chain {} (table {}, hook {}): not walked: {}'.format(
                path.chain.name, table_name(path.table), path.chain.base.hook if path.chain.base else '?', why))
    if not chain_results:
        lines.append('no chain on the path of the class: {}'.format(explanation(result)))
    return lines, result


def _combination(requirement: Requirement) -> str:
    if requirement.required == DENY:
        return 'dropped if any chain on the path drops all of it (the best chain counts)'
    return 'accepted only if every chain on the path accepts all of it (the worst chain counts)'


def explain(rule: ComplianceRule, requirement_name: str, sources: Sequence[Source], mode: str = EFFECTIVE) -> Explanation:
    """The walk of one requirement of ``rule`` on ``sources``, as text, ending with its result: the
    evaluator's (:func:`.evaluator.evaluate` on the same sources), UNKNOWN when the rule cannot be
    evaluated (a walk of another requirement may be what fails)."""
    requirement = requirement_named(requirement_name)
    evaluated = evaluate(rule, sources, mode)
    head = '{} ({}), {}: {} ({} mode)'.format(rule.name, rule.family, requirement.name, requirement.description, mode)
    lines = [head, 'the class: {}'.format(_class_words(requirement.packet_class(rule.loopback)))]
    walked: Optional[RequirementResult] = None
    try:
        _check_incompatible(sources)
        if mode == EFFECTIVE:
            lines.append('the class is {}'.format(_combination(requirement)))
            lines.append('chains in the order packets meet them; per rule: [none/some/all of the class reaching it matches]')
            walk_lines, walked = _walk_lines(rule, requirement, sources)
            lines.extend(walk_lines)
        else:
            lines.append('literal mode does not walk: it looks for {}'.format(requirement.literal.text(rule.loopback)))
            walked = _evaluate_requirement_literal(rule, requirement, sources)
    except (Unevaluable, ParseError, RulesUnavailable) as error:
        lines.append('the walk stops: {}'.format(error))
    except RecursionError:
        lines.append('the walk stops: it nests too deeply')
    if evaluated.error is not None:
        if walked is not None:
            lines.append('(this requirement alone would be {}: {})'.format(walked.status.name, explanation(walked)))
        lines.append('result: UNKNOWN: {}'.format(evaluated.error))
        return Explanation(requirement.name, '\n'.join(lines) + '\n', Status.UNKNOWN)
    result = evaluated.requirement(requirement.name)
    assert walked is not None and walked.status is result.status  # the same walk as the evaluator's
    lines.append('result: {}: {}'.format(result.status.name, explanation(result)))
    return Explanation(requirement.name, '\n'.join(lines) + '\n', result.status)


def _class_words(packets: PacketClass) -> str:
    def side(interfaces: Interfaces, word: str) -> str:
        if not interfaces.name:
            return ''
        return ' {} {}{}'.format(word, 'any interface but ' if interfaces.all_but else '', interfaces.name)

    destination = str(packets.destination) if packets.destination is not None else 'anywhere'
    return 'from {} to {}{}{}'.format(packets.source, destination, side(packets.in_interface, 'arriving on'), side(packets.out_interface, 'leaving through'))


# --- the pipeline's sources ----------------------------------------------------------------------


class ExplainingState(InstanceState):
    """An :class:`.pipeline.InstanceState` that also explains one requirement on the very sources the
    pipeline evaluates: for the kernel's ruleset alone, inside the walk run while it is read (in the
    same generation window, so every chain the walk enters is read there); otherwise on the sources
    built from what was collected, the way the pipeline builds them. The pipeline's results are
    unchanged: the explanation is computed beside them."""

    def __init__(self, requirement_name: str) -> None:
        super().__init__()
        requirement_named(requirement_name)  # KeyError for an unknown one
        self.requirement_name = requirement_name
        self.explanations: Dict[str, Explanation] = {}  # family -> its explanation

    def walk(self, options: Options, family: str, rule: ComplianceRule) -> Callable[[KernelRuleset, Tuple[Collected, ...]], RuleResult]:
        parsed: Dict[int, Source] = {}

        def evaluate_kernel(kernel: KernelRuleset, beside: Tuple[Collected, ...]) -> RuleResult:
            sources = walked_sources(kernel, beside, family, self.decoded, parsed)
            result = evaluate(rule, sources, options.mode)
            self.explanations[family] = explain(rule, self.requirement_name, sources, options.mode)
            return result

        return evaluate_kernel

    def evaluate(self, options: Options, family: str, rule: ComplianceRule, collected: Tuple[Collected, ...]) -> RuleResult:
        result = super().evaluate(options, family, rule, collected)
        if not (collected and isinstance(collected[0].walked, RuleResult)):
            self.explanations[family] = explain(rule, self.requirement_name, self._sources(family, collected), options.mode)
        return result

    def _sources(self, family: str, collected: Tuple[Collected, ...]) -> List[Source]:
        """As :func:`.pipeline._evaluate` builds them."""
        sources: List[Source] = []
        for piece in collected:
            if piece.kernel is not None:
                sources.extend(_kernel_sources(piece.kernel, family, self.decoded))
            else:
                sources.append(text_source(family, piece))
        return sources or [_empty(family)]

