"""Ruleset -> per-requirement results (spec sections 2 and 3). Pure: no I/O.

Effective mode walks every chain on a packet class's netfilter path the way the kernel does. Each
chain is scanned once forwards for the class it is entered with (what the packets reaching each rule
are known to be: marks and conntrack state that earlier rules and chains set for all of them, the
part of the source network earlier rules did not take) and summarised once backwards, from its last
rule to its first, so the work is linear in the number of rules whatever the jumps, gotos and RETURNs.
The results are data (what the result rests on, deciding rule, deviations, fixes as
:class:`.results.Fix` with their commands in ``remediation``); the report words them.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Generator, Iterable, List, Optional, Sequence, Set, Tuple

from .classify import ALL, NONE, SOME, KnownCondition, Relation, after, apply, classify, cover, excluded_by_known
from .ipset_contents import unknown_sets
from .model import INCOMPATIBLE_TABLE, JUMP, STATEMENT, Chain, Rule, Ruleset, RulesUnavailable, Table
from .parser import ParseError
from .requirements import (
    ACCEPT,
    DENY,
    EGRESS,
    HOOK_ORDER,
    INGRESS,
    CT_UNATTACHED,
    CT_UNKNOWN,
    CT_UNTRACKED,
    INPUT_ACCEPT_LO,
    INPUT_DROP_LOOPBACK_SOURCE,
    IPV4,
    LOOPBACK_INTERFACE,
    OUTPUT_ACCEPT_LO,
    NAT_DENIES_NEW_ONLY,
    NAT_NOT_CONSULTED,
    OUTPUT,
    PREROUTING,
    QUEUE,
    ComplianceRule,
    Interfaces,
    IPNetwork,
    PacketClass,
    Requirement,
    requirement_named,
)
from .results import (
    ABSENT,
    DECIDED,
    NOT_FIRST,
    PRESENT,
    SYNPROXY_PART,
    Deviation,
    Fix,
    Insertion,
    Position,
    RequirementResult,
    RuleResult,
    Status,
)

EFFECTIVE = 'effective'
LITERAL = 'literal'
MODES = (EFFECTIVE, LITERAL)

# The catalogue of target kinds (spec section 2, "Targets"). Verdicts, for every packet a rule takes
# (NAT targets end the walk of a nat chain without denying: for the packet they are an accept there);
# targets that give part of what the rule takes a verdict, and which part; RETURN and jumps are
# handled by the walk; every other target (LOG, MARK, CT ...) decides nothing.
_VERDICT_TARGETS = {
    'ACCEPT': ACCEPT,
    'DROP': DENY,
    'REJECT': DENY,
    'QUEUE': QUEUE,
    'NFQUEUE': QUEUE,
    'DNAT': ACCEPT,
    'SNAT': ACCEPT,
    'MASQUERADE': ACCEPT,
    'REDIRECT': ACCEPT,
}
_PART_VERDICT_TARGETS = {'SYNPROXY': (DENY, SYNPROXY_PART)}
# Targets that end or leave the walk and are never chains.
_WALK_TARGETS = frozenset(_VERDICT_TARGETS) | {'RETURN'}
_POLICY_VERDICTS = {'ACCEPT': ACCEPT, 'DROP': DENY}


@dataclass(frozen=True)
class Source:
    """A ruleset to evaluate, with the label messages use for it and the command that changes it
    (for its iptables tables; native nftables tables are changed with nft)."""

    ruleset: Ruleset
    command: str = 'iptables'
    label: str = ''


class Unevaluable(Exception):
    """The ruleset cannot be evaluated (undeclared goto target, a loop of jumps, an incompatible table...)."""


# --- effective mode: summarising a chain -------------------------------------------------------------

# The match module the netlink front-end gives conditions it can describe but not judge.
UNDECODED_CONDITIONS = 'nft'


def table_name(table: Table) -> str:
    """How messages name a table: ``filter`` for iptables' tables, ``inet hostfw`` for native ones."""
    return '{} {}'.format(table.family, table.name) if table.native else table.name


def _could_take_the_whole_class(rule: Rule, packets: PacketClass) -> bool:
    """A rule with a part the front-end could not decode: whether that part alone decides if it
    takes every packet of the class (the rest matches all of it). Otherwise the rule takes part of
    the class at most, whatever that part does, and is judged as such."""
    known = [match for match in rule.matches if match.module != UNDECODED_CONDITIONS]
    return classify(Rule(rule.chain, tuple(known), rule.target), packets) is ALL


def _rules_to_walk(chain: Chain) -> Sequence[Rule]:
    """A chain's rules. A front-end may give them decoded on first use (``walk_rules``), with some
    of each rule's conditions known before (``known_conditions``): a rule those say matches none of
    the class is never decoded."""
    rules: Optional[Sequence[Rule]] = getattr(chain, 'walk_rules', None)
    return rules if rules is not None else chain.rules


def _known_conditions(chain: Chain) -> Optional[Callable[[int], Optional[Tuple[KnownCondition, ...]]]]:
    return getattr(chain, 'known_conditions', None)


def _first_known_condition(chain: Chain) -> Optional[Callable[[int], Optional[KnownCondition]]]:
    """The first of a rule's known conditions, where the front-end has it cheaper than them all (the
    one that rules most of a Kubernetes node's service rules out)."""
    return getattr(chain, 'first_known_condition', None)


def _relation_memo(rules: Sequence[Rule]) -> Optional[Dict[Any, Any]]:
    """Where a front-end keeps its rules between evaluations while they are unchanged (``walk_memo``),
    each rule's relation to each class it was classified for is kept there too, under the class.
    One dictionary per chain holds all a walk keeps of it, each kind under keys of its own (a
    Kubernetes node's walk meets thousands of chains: a dictionary per kind would cost more than
    what they hold)."""
    memo: Optional[Dict[Any, Any]] = getattr(rules, 'walk_memo', None)
    return memo


def _relation(
    rules: Sequence[Rule],
    index: int,
    known: Optional[Callable[[int], Optional[Tuple[KnownCondition, ...]]]],
    first: Optional[Callable[[int], Optional[KnownCondition]]],
    packets: PacketClass,
) -> Relation:
    if first is not None:
        condition = first(index)
        if condition is not None and excluded_by_known((condition,), packets):
            return NONE
    if known is not None:
        conditions = known(index)
        if conditions is not None and excluded_by_known(conditions, packets):
            return NONE
    return classify(rules[index], packets)


def _handle_words(rule: Rule) -> str:
    return ' handle {}'.format(rule.handle) if rule.handle else ''

# Deviations are collected in a shared tree (node = (deviation or None, left, right)) so that combining
# the summaries of two rules costs O(1); the tree is flattened once per chain on the path.
_Devs = Optional[Tuple[Any, ...]]


def _join(left: _Devs, right: _Devs) -> _Devs:
    if left is None:
        return right
    if right is None or left is right:
        return left
    return (None, left, right)


def _add(devs: _Devs, deviation: Optional[Deviation]) -> _Devs:
    return devs if deviation is None else (deviation, devs, None)


def _flatten(devs: _Devs) -> Tuple[Deviation, ...]:
    found: Dict[Position, Deviation] = {}
    seen: Set[int] = set()
    stack = [devs]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        deviation, left, right = node
        if deviation is not None:
            found.setdefault(deviation.where, deviation)
        stack.append(right)
        stack.append(left)
    return tuple(sorted(found.values(), key=lambda d: (d.where.ruleset, d.where.table, d.where.chain, d.where.index or 0)))


@dataclass(frozen=True)
class _Summary:
    """What walking a chain from some rule on does to the packets that walk it.

    ``verdict`` None: they fall off the end or RETURN (back to the caller); else the verdict the
    bulk gets, decided at ``decided_by``. ``escapes``: part of the packets returns to the caller
    while the bulk goes on. ``devs``: partial deviations met on the way.
    """

    verdict: Optional[str]
    decided_by: Optional[Position]
    escapes: bool
    devs: _Devs


_RETURNED = _Summary(None, None, False, None)


def _same_summary(kept: _Summary, now: _Summary) -> bool:
    """Whether a chain's summary now says what the kept one said: the same object, or the same
    verdict, deciding rule and escape with the very same deviations (a service chain rewritten to
    jump to a new endpoint chain like the one it replaces; the deviations are not compared in depth,
    a tree of thousands of them would be compared recursively)."""
    return kept is now or (kept.devs is now.devs and kept.verdict == now.verdict and kept.escapes == now.escapes and kept.decided_by == now.decided_by)


def _ends_the_walk(rule: Rule) -> bool:
    target = rule.target
    return target is not None and (target.name in _WALK_TARGETS or target.goto)


def _synproxy(rule: Rule) -> bool:
    """SYNPROXY (the xtables target or the native statement, which arrives as the same target)."""
    return any(target.name in _PART_VERDICT_TARGETS for target in rule.actions + ((rule.target,) if rule.target else ()))


def _meet(left: Optional[PacketClass], right: Optional[PacketClass]) -> Optional[PacketClass]:
    if left is None:
        return right
    if right is None:
        return left
    return left.meet(right)


@dataclass(frozen=True)
class _View:
    """A chain as one packet class walks it, from its first rule on (the rules after one that ends
    the walk for the whole class are never reached and left out: a Kubernetes node's service chains
    behind an accept of lo are never read).

    Per rule reached: its relation to the packets that reach it, and the class a chain it calls is
    entered with. ``accepted``: what every packet that leaves it accepted is known to be (for a
    built-in chain, also those that get its policy ACCEPT); ``returned``: the same for the packets
    that go back to the caller of a user chain. None: no packet does."""

    relations: Tuple[Relation, ...]
    entered: Tuple[Optional[PacketClass], ...]
    accepted: Optional[PacketClass]
    returned: Optional[PacketClass]
    # Why rules reached matched only part of the class: the ipsets whose contents are not known.
    uncertain: Tuple[str, ...] = ()


# A chain's scan asks for the view of a chain it calls, entered with a class, and gets it back.
_Scan = Generator[Tuple[Chain, PacketClass], _View, _View]
# One such call: the chain called, the class before it was entered, the class entered, the view.
_Call = Tuple[str, PacketClass, PacketClass, _View]


class _ChainWalker:
    """Views and summaries of the chains of one table for the classes that walk them, each computed once.

    A chain is summarised for the class its packets are known to be when they enter it (marks and
    conntrack state set earlier); to keep the work linear, a user chain is summarised for at most
    one such class besides the class without that knowledge."""

    def __init__(self, table: Table, required: str, label: str, missing: Optional[Set[Tuple[str, str, str]]] = None) -> None:
        self.table = table
        self.missing = missing
        self.required = required
        self.label = label
        self.table_name = table_name(table)
        self.views: Dict[Tuple[str, PacketClass], _View] = {}
        self.summaries: Dict[Tuple[str, PacketClass], _Summary] = {}
        self._first_entry: Dict[str, PacketClass] = {}

    def position(self, chain: Chain, index: int, rule: Rule) -> Position:
        text = rule.text
        if not text:  # decoded for the walk without it
            text_at = getattr(_rules_to_walk(chain), 'text_at', None)
            text = text_at(index) if text_at is not None else ''
        return Position(self.table_name, chain.name, index + 1, text, self.label, rule.line, rule.handle, unknown_sets(rule))

    def policy_position(self, chain: Chain) -> Position:
        return Position(self.table_name, chain.name, None, 'policy ' + str(chain.policy), self.label, chain.line)

    def deviation(self, verdict: Optional[str], where: Optional[Position], part: str = '') -> Optional[Deviation]:
        if verdict is None or verdict == self.required or where is None:
            return None
        return Deviation(where, verdict, part)

    def called_chain(self, rule: Rule) -> Optional[Chain]:
        target = rule.target
        if target is None or target.kind == STATEMENT:
            return None
        chain = self.table.chain(target.name)
        if chain is None:
            if target.kind == JUMP:
                if self.missing is not None:
                    self.missing.add((self.table.family, self.table.name, target.name))
                    return None
                raise Unevaluable('{}: jumps to the chain {}, which was not read'.format(self._where(rule), target.name))
            if target.goto:
                raise Unevaluable(
                    '{}: -g {} goes to a chain that is not declared'.format(self._where(rule), target.name)
                )
            return None
        if chain.is_builtin:
            raise Unevaluable('{}: jumps to the built-in chain {}'.format(self._where(rule), target.name))
        return chain

    def _where(self, rule: Rule) -> str:
        if rule.handle:
            return '{} {}{}'.format(self.table_name, rule.chain, _handle_words(rule))
        return '{} {} (line {})'.format(self.table_name, rule.chain, rule.line)

    def _check_decoded(self, chain: Chain, rule: Rule, relation: Relation, packets: PacketClass) -> None:
        if rule.undecoded and relation is not NONE and _could_take_the_whole_class(rule, packets):
            raise Unevaluable(
                '{} {}{}: {} (inspect it with nft -a list chain {} {})'.format(
                    self.table_name, chain.name, _handle_words(rule), rule.undecoded, self.table_name, chain.name
                )
            )

    def _entry(self, callee: Chain, packets: PacketClass) -> PacketClass:
        stateless = packets.stateless
        if packets is stateless:
            return packets
        first = self._first_entry.setdefault(callee.name, packets)
        return packets if first == packets else stateless

    def _memo(self, chain: Chain) -> Optional[Dict[Any, Any]]:
        """Where the front-end keeps the chain's rules between evaluations while they are unchanged
        (``walk_memo``): what walks of it found, to be reused where what it depends on is the same,
        each kind under keys that begin with its name (:func:`_relation_memo`). Not while chains
        not read are collected (their absence is not in what is kept)."""
        memo: Optional[Dict[Any, Any]] = getattr(_rules_to_walk(chain), 'walk_memo', None)
        return memo if self.missing is None else None

    def _scan(self, chain: Chain, entry: PacketClass) -> _Scan:
        """The chain's view for the class: the one an earlier walk of the same rules found, where
        every chain it called was entered with the same class and gave the same view; else scanned."""
        memo = self._memo(chain)
        key = ('views', entry, chain.policy)
        if memo is not None and key in memo:
            kept, kept_calls = memo[key]
            if (yield from self._replay(kept_calls)):
                return kept  # type: ignore[no-any-return]
        calls: List[_Call] = []
        view = yield from self._scan_rules(chain, entry, calls)
        if memo is not None:
            memo[key] = (view, tuple(calls))
        return view

    def _replay(self, calls: Sequence['_Call']) -> Generator[Tuple[Chain, PacketClass], _View, bool]:
        """The calls a kept view rests on, made again (the views they give are needed anyway): True
        when each gives the view it gave then (a view is a function of its chain's rules and of what
        the views it calls hold: a service chain rewritten to jump to a new endpoint chain like the
        one it replaces gives an equal view, and its callers' views stand)."""
        for name, before, entering, seen in calls:
            callee = self.table.chain(name)
            if callee is None or callee.is_builtin or self._entry(callee, before) != entering:
                return False
            view = yield callee, entering
            if view is not seen and view != seen:
                return False
        return True

    def _scan_rules(self, chain: Chain, entry: PacketClass, calls: List['_Call']) -> _Scan:
        """Walk the chain forwards for the class: what the packets reaching each rule are known to
        be (what earlier rules set for all of them; the part of the source network earlier rules did
        not take), so each rule's relation is to them."""
        relations: List[Relation] = []
        entered: List[Optional[PacketClass]] = []
        accepted: Optional[PacketClass] = None
        returned: Optional[PacketClass] = None
        current = entry
        remaining: Optional[Tuple[IPNetwork, ...]] = (entry.source,)
        policy_accepts = chain.policy == 'ACCEPT'
        ended = False
        uncertain: List[str] = []
        rules = _rules_to_walk(chain)
        known = _known_conditions(chain)
        first = _first_known_condition(chain)
        memo = _relation_memo(rules)
        memo_class: Optional[PacketClass] = None
        memo_relations: List[Optional[Relation]] = []
        for index in range(len(rules)):
            if memo is not None and current is not memo_class:
                memo_class, memo_relations = current, memo.setdefault(current, [None] * len(rules))
            relation = memo_relations[index] if memo is not None else None
            if relation is None:
                relation = _relation(rules, index, known, first, current)
                if memo is not None:
                    memo_relations[index] = relation
            if relation is NONE:
                relations.append(NONE)
                entered.append(None)
                continue
            rule = rules[index]
            left: Optional[Tuple[IPNetwork, ...]] = None
            if relation is SOME and remaining is not None:
                covered = cover(rule, current, remaining)
                if covered is not None:
                    relation, left = covered
            self._check_decoded(chain, rule, relation, current)
            if relation is SOME:
                uncertain.extend(unknown_sets(rule))
            relations.append(relation)
            callee = self.called_chain(rule) if relation is not NONE else None
            target = rule.target
            ends = _ends_the_walk(rule)  # for the packets the rule matches
            if callee is not None and target is not None:
                entering = self._entry(callee, current)
                view = yield callee, entering
                ends = ends or view.returned is None  # the chain called keeps every packet it gets
                calls.append((callee.name, current, entering, view))
                entered.append(entering)
                accepted = _meet(accepted, view.accepted)
                if target.goto:
                    if view.returned is not None:  # they go on where this chain would have ended
                        if not chain.is_builtin:
                            returned = _meet(returned, view.returned)
                        elif policy_accepts:
                            accepted = _meet(accepted, view.returned)
                elif view.returned is not None:
                    current = view.returned if relation is ALL else current.meet(view.returned)
            else:
                entered.append(None)
                if relation is not NONE:
                    matched = apply(rule, current)
                    verdict = _VERDICT_TARGETS.get(target.name) if target is not None else None
                    if verdict in (ACCEPT, QUEUE):
                        accepted = _meet(accepted, matched)
                    elif target is not None and target.name == 'RETURN':
                        if not chain.is_builtin:
                            returned = _meet(returned, matched)
                        elif policy_accepts:
                            accepted = _meet(accepted, matched)
                    if not _ends_the_walk(rule):
                        current = after(rule, relation, current)
            if relation is ALL and ends:
                ended = True
                break
            if left is not None and ends:
                remaining = left
        if not ended:
            if not chain.is_builtin:
                returned = _meet(returned, current)
            elif policy_accepts:
                accepted = _meet(accepted, current)
        return _View(tuple(relations), tuple(entered), accepted, returned, tuple(dict.fromkeys(uncertain)))

    def summary(self, root: Chain, entry: PacketClass) -> Tuple[_Summary, _View]:
        """Summarise ``root`` for the class and, first, every chain it sends the class to (iterative DFS)."""
        key = (root.name, entry)
        if key not in self.summaries:
            fresh = not self.views and not self._first_entry
            if not (fresh and self._reuse(root, entry)):
                kept = self._kept(root, entry) if fresh else None
                self._visit(root, entry, {found: found for found in kept[1]} if kept is not None else {})
                if fresh:
                    self._keep(root, entry, kept)
        return self.summaries[key], self.views[key]

    def _root_key(self, root: Chain, entry: PacketClass) -> Tuple[Any, ...]:
        return ('roots', entry, root.policy, self.required, self.label, self.table_name)

    def _kept(self, root: Chain, entry: PacketClass) -> Optional[Tuple[Any, ...]]:
        """What an earlier walker kept of the walk from a base chain (:meth:`_keep`), if anything."""
        memo = self._memo(root)
        found: Optional[Tuple[Any, ...]] = memo.get(self._root_key(root, entry)) if memo is not None else None
        return found

    def _reuse(self, root: Chain, entry: PacketClass) -> bool:
        """A walk from a base chain, as an earlier walker found it, where every chain it entered has
        the very rules it had then (the front-end's ``content`` of each is the same object): what
        the walk found is a function of those rules, the class, the requirement and the ruleset."""
        content = getattr(self.table.chains, 'content', None)
        kept = self._kept(root, entry) if content is not None else None
        if kept is None or content is None:
            return False
        depends, views, summaries, first_entry = kept
        if any(content(name) is not rules for name, rules in depends):
            return False
        self.views.update(views)
        self.summaries.update(summaries)
        self._first_entry.update(first_entry)
        return True

    def _keep(self, root: Chain, entry: PacketClass, kept: Optional[Tuple[Any, ...]]) -> None:
        """The walk from a base chain, for a later walker to find again; ``kept``: what it replaces,
        whose pairs of a chain and its rules are taken where they still hold (what outlives a run
        is not made again at each one: Python's full collections follow it)."""
        memo = self._memo(root)
        content = getattr(self.table.chains, 'content', None)
        if memo is None or content is None:
            return
        before: Dict[str, Tuple[str, Any]] = {pair[0]: pair for pair in kept[0]} if kept is not None else {}
        depends = []
        for name in {name for name, _ in self.views}:
            rules = content(name)
            if rules is None:
                return
            pair = before.get(name)
            depends.append(pair if pair is not None and pair[1] is rules else (name, rules))
        memo[self._root_key(root, entry)] = (tuple(depends), dict(self.views), dict(self.summaries), dict(self._first_entry))

    def _visit(self, root: Chain, entry: PacketClass, keys: Dict[Tuple[str, PacketClass], Tuple[str, PacketClass]]) -> None:
        """``keys``: the keys of an earlier walk's views, taken for the same chains and classes."""
        on_stack: Set[str] = {root.name}
        stack: List[Tuple[Chain, PacketClass, _Scan]] = [(root, entry, self._scan(root, entry))]
        reply: Optional[_View] = None
        while stack:
            chain, packets, scan = stack[-1]
            try:
                callee, entering = scan.send(reply) if reply is not None else next(scan)
            except StopIteration as done:
                view = done.value
                stack.pop()
                on_stack.discard(chain.name)
                key = (chain.name, packets)
                key = keys.get(key, key)
                self.views[key] = view
                self.summaries[key] = self._summary_of(chain, packets, view)
                reply = view
                continue
            known = self.views.get((callee.name, entering))
            if known is not None:
                reply = known
                continue
            if callee.name in on_stack:
                raise Unevaluable('a loop of jumps: {} -> {}'.format(' -> '.join(c.name for c, _, _ in stack), callee.name))
            on_stack.add(callee.name)
            stack.append((callee, entering, self._scan(callee, entering)))
            reply = None

    def _summary_of(self, chain: Chain, packets: PacketClass, view: _View) -> _Summary:
        """The chain's summary: the one kept for the same view, requirement and ruleset where the
        chains it calls have the very summaries they had then; else summarised."""
        memo = self._memo(chain)
        if memo is None:
            return self._summarise(chain, view)
        rules = _rules_to_walk(chain)
        called = tuple(
            self.summaries[(str(getattr(rules[index].target, 'name', '')), entered)]
            for index, entered in enumerate(view.entered)
            if entered is not None
        )
        key = ('summaries', packets, chain.policy, self.required, self.label, self.table_name)
        kept = memo.get(key)
        if kept is not None and kept[0] is view and len(kept[1]) == len(called) and all(_same_summary(a, b) for a, b in zip(kept[1], called)):
            return kept[2]  # type: ignore[no-any-return]
        summary = self._summarise(chain, view)
        memo[key] = (view, called, summary)
        return summary

    def _end(self, chain: Chain) -> _Summary:
        if chain.is_builtin:
            return _Summary(_POLICY_VERDICTS[str(chain.policy)], self.policy_position(chain), False, None)
        return _RETURNED

    def _summarise(self, chain: Chain, view: _View) -> _Summary:
        after = self._end(chain)
        rules = _rules_to_walk(chain)
        for index in range(len(view.relations) - 1, -1, -1):
            relation = view.relations[index]
            if relation is NONE:
                continue
            rule = rules[index]
            if rule.target is None:
                continue
            after = self._step(chain, index, rule, relation, after, view.entered[index])
        return after

    def _step(self, chain: Chain, index: int, rule: Rule, relation: Relation, after: _Summary, entered: Optional[PacketClass]) -> _Summary:
        """The summary from this rule on, given the summary from the next rule on (``after``)."""
        target = rule.target
        assert target is not None
        if _synproxy(rule):
            # It answers TCP SYNs itself: that part of the class is denied, the rest walks on.
            denied, part = _PART_VERDICT_TARGETS['SYNPROXY']
            deviation = self.deviation(denied, self.position(chain, index, rule), part)
            after = _Summary(after.verdict, after.decided_by, after.escapes, _add(after.devs, deviation))
        if entered is not None:
            callee = self.called_chain(rule)
            assert callee is not None
            return self._step_into(chain, relation, target.goto, self.summaries[(callee.name, entered)], after)
        verdict = _VERDICT_TARGETS.get(target.name)
        if verdict is not None:
            if relation is ALL:
                return _Summary(verdict, self.position(chain, index, rule), False, None)
            if verdict == self.required:  # no deviation: no position to make (nor text to write)
                return after
            return _Summary(after.verdict, after.decided_by, after.escapes, _add(after.devs, self.deviation(verdict, self.position(chain, index, rule))))
        if target.name == 'RETURN':
            return self._step_return(chain, relation, after)
        return after  # LOG, MARK, CT, ...: evaluation continues with the next rule

    def _step_return(self, chain: Chain, relation: Relation, after: _Summary) -> _Summary:
        if chain.is_builtin:
            policy = self._end(chain)
            if relation is ALL:
                return policy
            deviation = self.deviation(policy.verdict, policy.decided_by)
            return _Summary(after.verdict, after.decided_by, after.escapes, _add(after.devs, deviation))
        if relation is ALL:
            return _RETURNED
        return _Summary(after.verdict, after.decided_by, True, after.devs)

    def _leave(self, chain: Chain, devs: _Devs) -> Tuple[bool, _Devs]:
        """Part of the packets leaves ``chain`` to its caller: for a built-in chain, they get its policy."""
        if not chain.is_builtin:
            return True, devs
        policy = self._end(chain)
        return False, _add(devs, self.deviation(policy.verdict, policy.decided_by))

    def _step_into(self, chain: Chain, relation: Relation, goto: bool, called: _Summary, after: _Summary) -> _Summary:
        if relation is ALL:
            if goto:
                escapes, devs = self._leave(chain, called.devs) if called.escapes else (False, called.devs)
                if called.verdict is None:
                    ended = self._end(chain)
                    return _Summary(ended.verdict, ended.decided_by, escapes, devs)
                return _Summary(called.verdict, called.decided_by, escapes, devs)
            if called.verdict is None:
                return _Summary(after.verdict, after.decided_by, after.escapes, _join(called.devs, after.devs))
            if not called.escapes:
                return called
            # The bulk is decided in the called chain; the part that returned walks on after the jump.
            devs = _add(_join(called.devs, after.devs), self.deviation(after.verdict, after.decided_by))
            return _Summary(called.verdict, called.decided_by, after.escapes or after.verdict is None, devs)
        # Only part of the packets enters: whatever is decided in there is at most a partial result.
        devs = _add(_join(after.devs, called.devs), self.deviation(called.verdict, called.decided_by))
        escapes = after.escapes
        if goto and (called.verdict is None or called.escapes):
            left, devs = self._leave(chain, devs)
            escapes = escapes or left
        return _Summary(after.verdict, after.decided_by, escapes, devs)


# The walkers of one walk: one per (ruleset, table).
_Walkers = Dict[Tuple[int, int], _ChainWalker]


# --- effective mode: the path ----------------------------------------------------------------------


@dataclass(frozen=True)
class _PathChain:
    """A base chain that packets of a class meet: in which ruleset and table, and, when it sees
    only part of the class (a nat chain on the input path, an ingress chain of another device),
    why: its deny can then satisfy a deny requirement only partially."""

    source: Source
    table: Table
    chain: Chain
    partial_because: str = ''

    @property
    def order(self) -> Tuple[int, int]:
        base = self.chain.base
        assert base is not None
        return HOOK_ORDER.index(base.hook), base.priority


@dataclass(frozen=True)
class _HookResult:
    path: _PathChain
    status: Status
    verdict: str
    deciding: Position
    deviations: Tuple[Deviation, ...]


_FAMILY_OF_TABLE = {'ip': IPV4, 'ip6': 'ipv6'}


def _takes_part(table: Table, family: str) -> bool:
    """Whether a table's base chains see packets of ``family`` (text tables are of one family)."""
    if table.dormant:
        return False
    return _FAMILY_OF_TABLE.get(table.family, family) == family


def _device_scope(chain: Chain, packets: PacketClass) -> Optional[str]:
    """For an ingress/egress chain: None when the class's packets never meet it, '' when all of
    them do, else why only part of them do."""
    base = chain.base
    assert base is not None
    side = packets.in_interface if base.hook == INGRESS else packets.out_interface
    devices = base.devices
    if not side.all_but:
        return '' if side.name in devices else None
    others = [device for device in devices if device != side.name]
    if not others:
        return None
    return 'it sees only the packets arriving on {}'.format(', '.join(others))


def _path_chain(source: Source, table: Table, chain: Chain, requirement: Requirement, packets: PacketClass) -> Optional[_PathChain]:
    base = chain.base
    if base is None or chain.policy is None or base.hook not in requirement.hooks:
        return None
    partial_because = ''
    if base.type == 'nat':
        if requirement.nat == NAT_NOT_CONSULTED:
            return None
        if requirement.nat == NAT_DENIES_NEW_ONLY:
            partial_because = 'nat chains see only the first packet of a connection; packets of established connections pass'
    if base.hook in (INGRESS, EGRESS):
        scope = _device_scope(chain, packets)
        if scope is None:
            return None
        partial_because = partial_because or scope
    return _PathChain(source, table, chain, partial_because)


def _path(requirement: Requirement, family: str, packets: PacketClass, sources: Sequence[Source]) -> List[_PathChain]:
    """Every base chain of every ruleset on the requirement's hooks, in the order packets meet them."""
    found = []
    for source in sources:
        for table in source.ruleset.tables.values():
            if not _takes_part(table, family):
                continue
            for chain in table.base_chains:
                on_path = _path_chain(source, table, chain, requirement, packets)
                if on_path is not None:
                    found.append(on_path)
    found.sort(key=lambda path: path.order)
    return found


def _status_of(verdict: str, required: str, deviations: Sequence[Deviation]) -> Status:
    if verdict != required:
        return Status.FAIL
    return Status.PARTIAL if deviations else Status.PASS


@dataclass
class _Walk:
    """What one evaluation shares between its walks: the chains walked (for the rule count) and,
    while the kernel's ruleset is read chain by chain, the chains that a walk needs and that were
    not read (None: a chain that is not there is an error)."""

    missing: Optional[Set[Tuple[str, str, str]]] = None
    walked: Dict[Tuple[int, int, str], int] = field(default_factory=dict)
    # For --explain (explain.py): when a list, each chain walk is added to it as (its result, the
    # class it was entered with, the walker that holds its views and summaries). Nothing else reads it.
    trace: Optional[List[Tuple['_HookResult', PacketClass, '_ChainWalker']]] = None
    # Per requirement: why rules on its walks matched only part of its class (ipsets not known).
    uncertain: Dict[str, Tuple[str, ...]] = field(default_factory=dict)

    def count(self, walkers: Dict[Tuple[int, int], '_ChainWalker'], paths: Sequence[_PathChain]) -> None:
        for path in paths:
            self.walked[(id(path.source), id(path.table), path.chain.name)] = len(path.chain)
        for (source, _), walker in walkers.items():
            content = getattr(walker.table.chains, 'content', None)
            for name, _packets in walker.summaries:
                rules = content(name) if content is not None else None
                self.walked[(source, id(walker.table), name)] = len(rules) if rules is not None else len(walker.table.chains[name])


def _walk_chain(path: _PathChain, packets: PacketClass, required: str, walkers: "_Walkers", walk: _Walk) -> Tuple[_HookResult, Optional[PacketClass]]:
    """The chain's result for the class, and what the packets it accepts are known to be (None: none)."""
    key = (id(path.source), id(path.table))
    walker = walkers.get(key)
    if walker is None:
        walker = walkers[key] = _ChainWalker(path.table, required, path.source.label, walk.missing)
    summary, view = walker.summary(path.chain, packets)
    assert summary.verdict is not None and summary.decided_by is not None  # built-in chains always decide
    deviations = _flatten(summary.devs)
    status = _status_of(summary.verdict, required, deviations)
    if path.partial_because and status is Status.PASS and required == DENY:
        where = Position(walker.table_name, path.chain.name, None, '({})'.format(path.partial_because), path.source.label)
        deviations = (Deviation(where, ACCEPT),)
        status = Status.PARTIAL
    result = _HookResult(path, status, summary.verdict, summary.decided_by, deviations)
    if walk.trace is not None:
        walk.trace.append((result, packets, walker))
    return result, view.accepted


# Where conntrack looks packets up on the prerouting and output hooks (NF_IP_PRI_CONNTRACK): the
# chains before it see packets that notrack can still exempt.
_CONNTRACK_PRIORITY = -200


def _before_conntrack(order: Tuple[int, int]) -> bool:
    hook, priority = order
    return HOOK_ORDER[hook] == INGRESS or (HOOK_ORDER[hook] in (PREROUTING, OUTPUT) and priority < _CONNTRACK_PRIORITY)


def _initial(packets: PacketClass) -> PacketClass:
    """At the start of its path: packets arriving on lo were tracked on their way out (notrack on the
    input path does nothing to them); the others are not yet looked up by conntrack."""
    if _arrives_on_lo(packets):
        return packets
    return replace(packets, conntrack=CT_UNATTACHED)


def entry_class(rule: ComplianceRule, requirement: Requirement, sources: Sequence[Source], walk: _Walk) -> Tuple[PacketClass, List[_PathChain]]:
    """The requirement's class as it starts its path, and the path."""
    packets = requirement.packet_class(rule.loopback)
    paths = _path(requirement, rule.family, packets, sources)
    if paths and _arrives_on_lo(packets):
        packets = _sent_through_lo(rule, packets, sources, walk)
    return packets, paths


def _arrives_on_lo(packets: PacketClass) -> bool:
    return packets.in_interface == Interfaces(LOOPBACK_INTERFACE)


def _sent_through_lo(rule: ComplianceRule, packets: PacketClass, sources: Sequence[Source], walk: _Walk) -> PacketClass:
    """The class arriving on lo as its packets left the output path: every one of them was sent by
    this host through lo, and keeps the mark, connection mark and conntrack state (notrack too) that
    the output path's chains set for every packet they let through."""
    output = requirement_named(OUTPUT_ACCEPT_LO)
    leaving = output.packet_class(rule.loopback)
    if (leaving.source, leaving.destination) != (packets.source, packets.destination):
        return packets
    paths = _path(output, rule.family, leaving, sources)
    if not paths:
        return packets
    try:
        _, _, sent = _walk_in_order(leaving, paths, output.required, {}, _Walk(walk.missing), False)
    except Unevaluable:
        return packets  # the output path's own fault is its requirement's to report: nothing is known of it here
    conntrack = CT_UNTRACKED if sent.conntrack == CT_UNTRACKED else packets.conntrack
    return replace(packets, mark=sent.mark, ctmark=sent.ctmark, conntrack=conntrack, zone=sent.zone)


def _walk_in_order(
    packets: PacketClass, paths: Sequence[_PathChain], required: str, walkers: "_Walkers", walk: _Walk, skip_partial: bool
) -> Tuple[List[_HookResult], bool, PacketClass]:
    """The chains of the path walked in the order packets meet them, each for what the class is known
    to be when it gets there: what the chains before set for every packet they accepted. Chains at
    the same place of the path (same hook and priority, in two rulesets) run in an order the check
    cannot know: after them nothing set earlier is relied on; a chain that sees only part of the
    class (nat, another device's ingress) leaves known only what it did not change. With
    ``skip_partial`` the chains that see only part of the class are not walked (whether any was
    skipped is returned), and nothing set before them is relied on after them. Also returned: what
    the packets that pass the whole path are known to be."""
    results: List[_HookResult] = []
    current = _initial(packets)
    skipped = False
    index = 0
    while index < len(paths):
        order = paths[index].order
        group = [path for path in paths[index:] if path.order == order]
        index += len(group)
        if not _before_conntrack(order) and current.conntrack == CT_UNATTACHED:
            current = replace(current, conntrack=CT_UNKNOWN)
        entry, leaving = current, current
        for path in group:
            if skip_partial and path.partial_because:
                skipped = True
                leaving = current.stateless
                continue
            base = path.chain.base
            assert base is not None
            if base.type == 'nat' and entry.conntrack == CT_UNTRACKED:
                continue  # nat chains see only packets that conntrack tracks
            result, accepted = _walk_chain(path, entry, required, walkers, walk)
            results.append(result)
            if len(group) > 1:
                leaving = current.stateless
            elif accepted is not None:
                leaving = accepted if not (path.partial_because or base.type == 'nat') else entry.meet(accepted)
        current = leaving
    return results, skipped, current


def _walk_path(requirement: Requirement, packets: PacketClass, paths: Sequence[_PathChain], walk: _Walk) -> List[_HookResult]:
    """Every chain of the path, walked for the class. For the deny requirement the chains that see
    only part of the class (nat, other devices' ingress) are walked only when every other chain
    fails: they cannot do better than partial (a Kubernetes node's nat service chains are not read)."""
    walkers: _Walkers = {}
    deny = requirement.required == DENY
    results, skipped, _ = _walk_in_order(packets, paths, requirement.required, walkers, walk, deny)
    # They can make a deny at most partial: they matter only where every other chain fails.
    if skipped and all(result.status is Status.FAIL for result in results):
        results, _, _ = _walk_in_order(packets, paths, requirement.required, walkers, walk, False)
    walk.count(walkers, paths)
    reasons = (reason for walker in walkers.values() for view in walker.views.values() for reason in view.uncertain)
    walk.uncertain[requirement.name] = tuple(dict.fromkeys(reasons))
    return results


def _nothing_on_the_path(requirement: Requirement, required: str) -> _HookResult:
    table = Table('filter', {})
    chain = Chain(requirement.literal_chain, 'ACCEPT', (), lambda raw: raw)
    deciding = Position('filter', requirement.literal_chain, None, '(no such chain loaded: accepts everything)')
    return _HookResult(_PathChain(Source(Ruleset({})), table, chain), _status_of(ACCEPT, required, ()), ACCEPT, deciding, ())


def _check_incompatible(sources: Sequence[Source]) -> None:
    """Rules the iptables tools cannot show may drop anything, in any table (nat too): never a pass."""
    for source in sources:
        for warning in source.ruleset.warnings_of(INCOMPATIBLE_TABLE):
            raise Unevaluable(
                "line {}: table `{}' holds rules the iptables tools cannot show (native nftables rules); "
                "inspect them with 'nft list ruleset'".format(warning.line, warning.table)
            )


def _nft_family_words(table: Table) -> str:
    return '{} {}'.format(table.family, table.name)


def _accept_fix(requirement: Requirement, result: _HookResult) -> Fix:
    path = result.path
    side = 'iif' if requirement.literal_chain == 'INPUT' else 'oif'
    if path.table.native:
        return Fix((Insertion('nft', _nft_family_words(path.table), path.chain.name, None, '{} {} accept'.format(side, LOOPBACK_INTERFACE)),))
    rule = '-{} {} -j ACCEPT'.format(side[0], LOOPBACK_INTERFACE)
    return Fix((Insertion(path.source.command, path.table.name, path.chain.name, 1, rule),))


def _native_drop_fix(rule: ComplianceRule, path: _PathChain) -> Fix:
    address = 'ip saddr' if rule.family == IPV4 else 'ip6 saddr'
    text = 'iif != {} {} {} drop'.format(LOOPBACK_INTERFACE, address, rule.loopback_text)
    return Fix((Insertion('nft', _nft_family_words(path.table), path.chain.name, None, text),))


def _drop_fix(rule: ComplianceRule, source: Source, filter_input: Optional[Chain]) -> Fix:
    """Where the anti-spoofing DROP must go in filter INPUT to take effect without dropping lo traffic.

    Right after an unconditional ``-i lo -j ACCEPT`` that precedes every rule that could let the
    class through, the CIS rule itself; otherwise ``! -i lo`` keeps lo traffic out of it, at the top.
    """
    lo_class = requirement_named(INPUT_ACCEPT_LO).packet_class(rule.loopback)
    spoof_class = requirement_named(INPUT_DROP_LOOPBACK_SOURCE).packet_class(rule.loopback)
    literal = '-s {} -j DROP'.format(rule.loopback_text)
    if filter_input is not None:
        for index, candidate in enumerate(filter_input.rules):
            target = candidate.target
            if target is None or target.name in ('LOG', 'NFLOG', 'AUDIT'):
                continue
            if target.name == 'ACCEPT' and not target.goto and classify(candidate, lo_class) is ALL:
                if classify(candidate, spoof_class) is NONE:
                    return Fix((Insertion(source.command, 'filter', 'INPUT', index + 2, literal),))
            if classify(candidate, spoof_class) is not NONE:
                break
    text = '-s {} ! -i {} -j DROP'.format(rule.loopback_text, LOOPBACK_INTERFACE)
    return Fix((Insertion(source.command, 'filter', 'INPUT', 1, text),))


def _deny_fix(rule: ComplianceRule, results: Sequence[_HookResult], sources: Sequence[Source]) -> Fix:
    """In iptables' filter INPUT where iptables' tables are in use (or nothing else is), else in the
    first native input chain of type filter."""
    iptables = [r.path for r in results if not r.path.table.native and r.path.chain.base is not None]
    natives = [r.path for r in results if r.path.table.native and r.path.chain.base is not None and r.path.chain.base.type == 'filter']
    if natives and not iptables:
        inputs = [path for path in natives if path.chain.base is not None and path.chain.base.hook == 'input']
        return _native_drop_fix(rule, (inputs or natives)[0])
    main = next((path.source for path in iptables if path.table.name == 'filter'), sources[0])
    return _drop_fix(rule, main, main.ruleset.chain('filter', 'INPUT'))


def _main_filter(results: Sequence[_HookResult]) -> _HookResult:
    """The result shown when no chain stands out: iptables' filter chain, else the first."""
    return next((r for r in results if r.path.table.name == 'filter' and not r.path.table.native), results[0])


def _combine_accept(requirement: Requirement, results: Sequence[_HookResult], uncertain: Tuple[str, ...]) -> RequirementResult:
    status = max(result.status for result in results)
    decisive = next((r for r in results if r.status is status and status is Status.FAIL), _main_filter(results))
    deviations = tuple(d for result in results for d in result.deviations)
    fixes = tuple(dict.fromkeys(_accept_fix(requirement, r) for r in results if r.status is not Status.PASS))
    return _requirement_result(requirement, status, decisive, deviations, fixes, uncertain)


def _commands(fixes: Sequence[Fix]) -> Tuple[str, ...]:
    return tuple(dict.fromkeys(fix.command for fix in fixes))


def _requirement_result(
    requirement: Requirement,
    status: Status,
    decisive: _HookResult,
    deviations: Tuple[Deviation, ...],
    fixes: Tuple[Fix, ...],
    uncertain: Tuple[str, ...] = (),
) -> RequirementResult:
    return RequirementResult(
        requirement.name, status, DECIDED, decisive.deciding, decisive.verdict, deviations, _commands(fixes), fixes,
        uncertain if status is not Status.PASS else (),
    )


def _combine_deny(
    rule: ComplianceRule, requirement: Requirement, results: Sequence[_HookResult], sources: Sequence[Source], uncertain: Tuple[str, ...]
) -> RequirementResult:
    status = min(result.status for result in results)
    if status is Status.FAIL:
        decisive = _main_filter(results)
    else:
        decisive = next(r for r in results if r.status is status)
    deviations = decisive.deviations if status is Status.PARTIAL else ()
    fixes: Tuple[Fix, ...] = ()
    if status is not Status.PASS:
        fixes = (_deny_fix(rule, results, sources),)
    return _requirement_result(requirement, status, decisive, deviations, fixes, uncertain)


def _evaluate_requirement_effective(rule: ComplianceRule, requirement: Requirement, sources: Sequence[Source], walk: _Walk) -> RequirementResult:
    packets, paths = entry_class(rule, requirement, sources, walk)
    results = _walk_path(requirement, packets, paths, walk) or [_nothing_on_the_path(requirement, requirement.required)]
    uncertain = walk.uncertain.get(requirement.name, ())
    if requirement.required == DENY:
        return _combine_deny(rule, requirement, results, sources, uncertain)
    return _combine_accept(requirement, results, uncertain)


# --- literal mode (spec section 3) ---------------------------------------------------------------


def _is_literal(rule: Rule, option: str, value: str, target: str) -> bool:
    """``rule`` is exactly ``-A CHAIN <option> <value> -j <target>``, give or take ``-m comment``."""
    if rule.target is None or rule.target.goto or rule.target.name != target or rule.target.args:
        return False
    criteria = [match for match in rule.matches if match.module != 'comment']
    if len(criteria) != 1 or criteria[0].module or len(criteria[0].options) != 1:
        return False
    found = criteria[0].options[0]
    if found.name != option or found.negated or len(found.values) != 1:
        return False
    if option == '-s':
        return _same_network(found.values[0], value)
    return found.values[0] == value


def _same_network(text: str, expected: str) -> bool:
    try:
        return ipaddress.ip_network(text, strict=False) == ipaddress.ip_network(expected)
    except ValueError:
        return False


def _evaluate_requirement_literal(rule: ComplianceRule, requirement: Requirement, sources: Sequence[Source]) -> RequirementResult:
    literal = requirement.literal
    option, value, target = literal.option, literal.value_for(rule.loopback), literal.target
    wanted = literal.text(rule.loopback)
    packets = requirement.packet_class(rule.loopback)
    found: Optional[Position] = None
    blocker: Optional[Position] = None
    for source in sources:
        chain = source.ruleset.chain('filter', literal.chain)
        if chain is None:
            continue
        for index, candidate in enumerate(chain.rules):
            position = Position('filter', chain.name, index + 1, candidate.text, source.label, candidate.line)
            if _is_literal(candidate, option, value, target):
                found = found or position
                break
            denies = candidate.target is not None and _VERDICT_TARGETS.get(candidate.target.name) == DENY
            if requirement.literal_before_denies and denies and classify(candidate, packets) is not NONE:
                blocker = blocker or position
                break
    main = sources[0]
    at_the_top = Fix((Insertion(main.command, 'filter', literal.chain, 1, literal.criteria(rule.loopback)),))
    if found is not None and blocker is None:
        return RequirementResult(requirement.name, Status.PASS, PRESENT, found, literal=wanted)
    if blocker is not None:
        return RequirementResult(
            requirement.name, Status.FAIL, NOT_FIRST, blocker, None, (), _commands((at_the_top,)), (at_the_top,), literal=wanted
        )
    fix = at_the_top
    if requirement.required == DENY:
        fix = _drop_fix(rule, main, main.ruleset.chain('filter', 'INPUT'))
        if fix.steps[0].rule != literal.criteria(rule.loopback):
            # The literal rule must stand after the lo ACCEPT: put both at the top, in that order.
            accept = requirement_named(INPUT_ACCEPT_LO).literal
            fix = Fix(
                (
                    Insertion(main.command, 'filter', accept.chain, 1, accept.criteria(rule.loopback)),
                    Insertion(main.command, 'filter', literal.chain, 2, literal.criteria(rule.loopback)),
                )
            )
    return RequirementResult(requirement.name, Status.FAIL, ABSENT, None, None, (), _commands((fix,)), (fix,), literal=wanted)


# --- both modes ----------------------------------------------------------------------------------


def _worst(statuses: Iterable[Status]) -> Status:
    return max(statuses, default=Status.PASS)


def evaluate(
    rule: ComplianceRule, sources: Sequence[Source], mode: str = EFFECTIVE, missing: Optional[Set[Tuple[str, str, str]]] = None
) -> RuleResult:
    """Evaluate one compliance rule on one or more rulesets of its family (e.g. nft and legacy).

    Never raises for a bad ruleset: what cannot be evaluated is a result with status UNKNOWN. With
    ``missing``, a jump to a chain of the kernel's ruleset that was not read adds (family, table,
    chain) to it instead, and the result is only a step towards the real one.
    """
    if mode not in MODES:
        raise ValueError('mode must be one of {}'.format(', '.join(MODES)))
    if not sources:
        raise ValueError('at least one ruleset is needed')
    walk = _Walk(missing)
    try:
        _check_incompatible(sources)
        if mode == LITERAL:
            results = tuple(_evaluate_requirement_literal(rule, requirement, sources) for requirement in rule.requirements)
            for requirement in rule.requirements:
                walk.count({}, _path(requirement, rule.family, requirement.packet_class(rule.loopback), sources))
        else:
            results = tuple(_evaluate_requirement_effective(rule, requirement, sources, walk) for requirement in rule.requirements)
    except Unevaluable as error:
        return RuleResult(rule, Status.UNKNOWN, error='cannot evaluate the ruleset: {}'.format(error), mode=mode)
    except ParseError as error:
        return RuleResult(rule, Status.UNKNOWN, error='unparseable ruleset: {}'.format(error), mode=mode)
    except RecursionError:
        return RuleResult(rule, Status.UNKNOWN, error='cannot evaluate the ruleset: it nests too deeply', mode=mode)
    except RulesUnavailable as error:
        return RuleResult(rule, Status.UNKNOWN, error='cannot evaluate the ruleset: {}'.format(error), mode=mode)
    return RuleResult(rule, _worst(result.status for result in results), results, sum(walk.walked.values()), mode=mode)
