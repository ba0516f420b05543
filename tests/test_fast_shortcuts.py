"""The shortcuts of the netlink front-end against the full decode: the conditions read before a rule
is decoded (loopback_traffic.nft_decode.leading_conditions), and the evaluation that skips the rules
they say match none of the class, must give exactly what decoding every rule gives. On byte-built
rules, on the test corpora and on the benchmark's presets loaded into lt- namespaces."""
import base64
import os
import pickle
import sys
import textwrap

import pytest

from datadog_checks.loopback_traffic.classify import NONE, classify, classify_matches, excluded_by_known, known_address
from datadog_checks.loopback_traffic.evaluator import Source, evaluate
from datadog_checks.loopback_traffic.model import Match, Option, Ruleset
from datadog_checks.loopback_traffic.nf_tables import KernelRuleset
from datadog_checks.loopback_traffic.nft_decode import DecodeCache, FirstConditions, decode_rule, decode_tables, known_conditions, leading_conditions
from datadog_checks.loopback_traffic.requirements import IPV4, IPV6, LOOPBACK_NETWORKS, OUTPUT_ACCEPT_LO, REQUIREMENTS, RULES, requirement_named

from . import nft_bytes as nb
from .netns import require_tools
from .rulesets import CIS_V4
from .test_nft_decode import IPTABLES_RULES

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import generate  # noqa: E402

NETWORK, TRANSPORT = 1, 2
META_IIF, META_IIFNAME, META_OIFNAME, META_NFPROTO, META_L4PROTO = 4, 6, 7, 15, 16
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'loopback_traffic', 'data', 'examples')


def classes(family):
    return [requirement.packet_class(LOOPBACK_NETWORKS[family]) for requirement in REQUIREMENTS]


def known_of(match, version):
    """The known condition a leading match stands for, built by the classifier's own reading of the
    match's text (what the walk would have classified)."""
    (option,) = match.options
    assert match.module == '' and len(option.values) == 1
    if option.name in ('-s', '-d'):
        return known_address(option.name, option.negated, version, option.values[0])
    return (option.name, option.negated, 0, option.values[0], 0, 0)


def agrees(rule, family='ip'):
    """The shortcut's conditions are among the decoded rule's, and say NONE only where it is NONE; the
    form the walk reads (no objects, no text) stands for exactly them and says NONE exactly where
    they do."""
    version = 4 if family == 'ip' else 6
    decoded = decode_rule(rule, {}, family, iptables=True)
    walked = decode_rule(rule, {}, family, iptables=True, walk=True)
    # What the walk decodes is the rule, but for its text and comments (which match every packet).
    assert walked.text == '' and walked.matches == tuple(match for match in decoded.matches if match.module != 'comment'), (walked, decoded)
    assert (walked.chain, walked.target, walked.actions, walked.undecoded, walked.handle) == (
        decoded.chain, decoded.target, decoded.actions, decoded.undecoded, decoded.handle)
    conditions = leading_conditions(rule.raw_expressions, version)
    known = known_conditions(rule.raw_expressions, version)
    assert known == (tuple(known_of(match, version) for match in conditions) if conditions is not None else None), (known, conditions)
    for condition in conditions or ():
        assert condition in decoded.matches, (condition, decoded)
    for packets in classes(IPV4 if version == 4 else IPV6) + classes(IPV6 if version == 4 else IPV4):
        excluded = conditions is not None and classify_matches(conditions, packets) is NONE
        assert (known is not None and excluded_by_known(known, packets)) == excluded, (conditions, packets)
        if excluded:
            assert classify(decoded, packets) is NONE, (decoded, packets)
    first_conditions_agree(rule.raw_expressions, version, known)
    return conditions


def first_conditions_agree(raw, version, known):
    """What :class:`FirstConditions` learns of the rule's layout gives the first known condition of
    the rule, and of the rule with any other value in the place of the one it first compares."""
    import random

    first = FirstConditions(version)
    assert first.known(raw) == known
    assert_first_is_the_first_known(first, raw, version)
    chosen = random.Random(raw)
    for length, layouts in first._by_length.items():
        for prefix, layout in layouts.items():
            assert raw.startswith(prefix)
            for _ in range(8):
                other = raw[:length] + bytes(chosen.randrange(256) for _ in range(layout.size)) + raw[length + layout.size:]
                found = first.first(other)
                expected = known_conditions(other, version)
                assert found is not None and expected is not None and found == expected[0], (other, found, expected)
    return first


def assert_first_is_the_first_known(first, raw, version):
    found = first.first(raw)
    expected = known_conditions(raw, version)
    assert found is None or (expected is not None and found == expected[0]), (raw, found, expected)


# ----------------------------------------------------------------------------- byte-built rules


def test_destination_of_a_service_rule_is_known_before_the_decode():
    rule = nb.rule(nb.meta(META_L4PROTO), nb.cmp(nb.EQ, b'\x06'), nb.payload(NETWORK, 16, 4), nb.cmp(nb.EQ, bytes([10, 96, 0, 1])),
                   nb.compat_match('comment', 0, b'svc'.ljust(256, b'\0')), nb.payload(TRANSPORT, 2, 2), nb.cmp(nb.EQ, b'\x01\xbb'),
                   nb.counter(), nb.verdict(nb.JUMP, 'KUBE-SVC-X'), chain='KUBE-SERVICES', table='nat')
    assert agrees(rule) == (Match('', (Option('-d', ('10.96.0.1/32',)),)),)
    lo_output = requirement_named(OUTPUT_ACCEPT_LO).packet_class(LOOPBACK_NETWORKS[IPV4])
    assert classify_matches(agrees(rule), lo_output) is NONE
    # Another service: its destination read from the layout the first one taught, without a parse.
    first = FirstConditions(4)
    first.known(rule.raw_expressions)
    other = nb.rule(nb.meta(META_L4PROTO), nb.cmp(nb.EQ, b'\x06'), nb.payload(NETWORK, 16, 4), nb.cmp(nb.EQ, bytes([10, 96, 7, 9])),
                    nb.compat_match('comment', 0, b'other'.ljust(256, b'\0')), nb.payload(TRANSPORT, 2, 2), nb.cmp(nb.EQ, b'\x00\x35'),
                    nb.counter(), nb.verdict(nb.JUMP, 'KUBE-SVC-Y'), chain='KUBE-SERVICES', table='nat')
    number = int.from_bytes(bytes([10, 96, 7, 9]), 'big')
    assert first.first(other.raw_expressions) == ('-d', False, 4, number, number, 32) == known_conditions(other.raw_expressions, 4)[0]
    assert excluded_by_known((first.first(other.raw_expressions),), lo_output)


@pytest.mark.parametrize('expressions, expected', [
    # a negated source, masked to a prefix
    ((nb.payload(NETWORK, 12, 2), nb.bitwise(b'\xff\xf0'), nb.cmp(nb.NEQ, b'\xac\x10'), nb.verdict(nb.DROP)),
     (Match('', (Option('-s', ('172.16.0.0/12',), True),)),)),
    # a mask that is not a prefix: the decoder's text, which the classifier cannot read as a prefix
    ((nb.payload(NETWORK, 12, 4), nb.bitwise(b'\xff\x00\xff\x00'), nb.cmp(nb.EQ, b'\x7f\x00\x01\x00'), nb.verdict(nb.DROP)),
     (Match('', (Option('-s', ('127.0.1.0/255.0.255.0',)),)),)),
    # interface names, exact and prefix
    ((nb.meta(META_IIFNAME), nb.cmp(nb.EQ, nb.ifname('eth0')), nb.meta(META_OIFNAME), nb.cmp(nb.NEQ, b'veth'), nb.verdict(nb.ACCEPT)),
     (Match('', (Option('-i', ('eth0',)),)), Match('', (Option('-o', ('veth+',), True),)))),
    # the address comes after a statement: not a condition of the rule
    ((nb.counter(), nb.verdict(nb.ACCEPT), nb.payload(NETWORK, 12, 4), nb.cmp(nb.EQ, b'\x0a\x00\x00\x01')), None),
    ((nb.immediate(1, b'\x01\x02\x03\x04'), nb.payload(NETWORK, 12, 4), nb.cmp(nb.EQ, b'\x0a\x00\x00\x01'), nb.verdict(nb.DROP)), None),
    # the register is loaded again before the comparison: what was loaded last is compared
    ((nb.payload(NETWORK, 12, 4), nb.meta(META_L4PROTO), nb.cmp(nb.EQ, b'\x0a\x00\x00\x01'), nb.verdict(nb.DROP)), None),
    ((nb.payload(NETWORK, 12, 4, dreg=9), nb.payload(NETWORK, 16, 4, dreg=1), nb.cmp(nb.EQ, b'\x0a\x00\x00\x01', sreg=9),
      nb.verdict(nb.DROP)), (Match('', (Option('-s', ('10.0.0.1/32',)),)),)),
    # a 16-byte register load covers the 4-byte register it overlaps
    ((nb.payload(NETWORK, 12, 4, dreg=9), nb.meta(META_IIFNAME, dreg=1), nb.cmp(nb.EQ, b'\x0a\x00\x00\x01', sreg=9),
      nb.verdict(nb.DROP)), None),
    # ordered comparisons and ranges are conditions the shortcut leaves to the decode
    ((nb.payload(NETWORK, 12, 4), nb.cmp(nb.GT, b'\x0a\x00\x00\x01'), nb.verdict(nb.DROP)), None),
    # nfproto could change how the decoder reads the addresses after it: the shortcut stops there
    ((nb.meta(META_NFPROTO), nb.cmp(nb.EQ, b'\x0a'), nb.payload(NETWORK, 8, 16), nb.cmp(nb.EQ, b'\0' * 15 + b'\1'), nb.verdict(nb.DROP)), None),
    # a shift, an xor: the decoder does not read the value, nor does the shortcut
    ((nb.payload(NETWORK, 12, 4), nb.bitwise(b'\xff\xff\xff\x00', xor=b'\x00\x00\x00\x01'), nb.cmp(nb.EQ, b'\x0a\x00\x00\x01'),
      nb.verdict(nb.DROP)), None),
])
def test_shortcut_conditions(expressions, expected):
    assert agrees(nb.rule(*expressions)) == expected


@pytest.mark.parametrize('expressions', [
    # a comment in its place, before the verdict
    (nb.payload(NETWORK, 12, 4), nb.cmp(nb.EQ, b'\x7f\x00\x00\x01'), nb.compat_match('comment', 0, b'x'.ljust(256, b'\0')), nb.verdict(nb.DROP)),
    # a comment after a statement: what is wrong with its place is found by the walk's decode too
    (nb.compat_target('MARK', 2, bytes(8)), nb.compat_match('comment', 0, b'late'.ljust(256, b'\0')), nb.verdict(nb.ACCEPT)),
    # a comment after the verdict never runs, in either decode
    (nb.verdict(nb.DROP), nb.compat_match('comment', 0, b'dead'.ljust(256, b'\0'))),
    # two comments around a port comparison
    (nb.compat_match('comment', 0, b'a'.ljust(256, b'\0')), nb.meta(META_L4PROTO), nb.cmp(nb.EQ, b'\x06'), nb.payload(TRANSPORT, 2, 2),
     nb.cmp(nb.EQ, b'\x00\x16'), nb.compat_match('comment', 0, b'b'.ljust(256, b'\0')), nb.verdict(nb.ACCEPT)),
])
def test_the_walks_decode_is_the_rule_but_for_its_text_and_comments(expressions):
    agrees(nb.rule(*expressions))


def test_malformed_expressions_are_left_to_the_decoder():
    good = nb.rule(nb.payload(NETWORK, 12, 4), nb.cmp(nb.EQ, b'\x0a\x00\x00\x01'), nb.verdict(nb.DROP))
    assert leading_conditions(good.raw_expressions, 4) is not None
    for cut in range(1, len(good.raw_expressions)):
        truncated = nb.KernelRule(good.family, good.table, good.chain, good.handle, raw_expressions=good.raw_expressions[:cut])
        agrees(truncated)
    broken = good.raw_expressions + nb.attr(1, b'\x09\x00\x01\x00xx')  # an element whose name overruns it
    assert leading_conditions(broken, 4) is None
    # What a layout taught is used only where the whole rule is laid out as plainly.
    first = first_conditions_agree(good.raw_expressions, 4, known_conditions(good.raw_expressions, 4))
    assert first.first(good.raw_expressions) is not None and first.first(broken) is None
    for cut in range(len(good.raw_expressions)):
        assert_first_is_the_first_known(first, good.raw_expressions[:cut], 4)
    for tail in (b'\x04\x00\x01\x00', b'\x08\x00\x01\x00\x04\x00\x01\x00', b'\x06\x00\x02\x00ab\0\0', b'\x04\x00', b'\xff\xff\x01\x00'):
        assert_first_is_the_first_known(first, good.raw_expressions + tail, 4)


def test_ipv6_addresses():
    rule = nb.rule(nb.payload(NETWORK, 24, 16), nb.cmp(nb.EQ, bytes.fromhex('fd000010009600000000000000000001')), nb.verdict(nb.DROP),
                   family='ip6')
    assert agrees(rule, 'ip6') == (Match('', (Option('-d', ('fd00:10:96::1/128',)),)),)


def test_one_address_is_written_as_the_masked_form_writes_it():
    """The text of an unmasked address comparison (the shortcut for one address) is what the general
    path (mask, pad, prefix) writes, in both families and for compared lengths short of the field."""
    import random

    from datadog_checks.loopback_traffic.nft_decode import _address_option, _Field, _masked, _network_text, _Value

    chosen = random.Random(11)
    for version, size in ((4, 4), (6, 16)):
        field = _Field('address', 'ip daddr', '-d', size=size, version=version)
        for _ in range(300):
            length = chosen.choice((size, size, chosen.randint(1, size)))
            data = bytes(chosen.choice((0, 255, chosen.randrange(256))) for _ in range(length))
            value = _Value(field, length)
            masked, mask = _masked(value, data)
            pad = size - length
            assert _address_option(value, data) == _network_text(masked + b'\0' * pad, mask + b'\0' * pad, version), (version, data)


def test_known_conditions_of_random_address_and_interface_comparisons_say_what_their_matches_say():
    """Addresses of both families, whole or cut short, masked (prefix or not), equal or not, and
    interface names: the known form says NONE for exactly the classes the matches say NONE for
    (:func:`agrees`), those of the other family included."""
    import random

    chosen = random.Random(23)
    for _ in range(400):
        family, version, size = chosen.choice((('ip', 4, 4), ('ip6', 6, 16)))
        offset = chosen.choice((12, 16) if version == 4 else (8, 24))
        length = chosen.choice((size, size, chosen.randint(1, size)))
        data = bytes(chosen.choice((0, 127, 255, chosen.randrange(256))) for _ in range(length))
        loads = [nb.payload(NETWORK, offset, length)]
        if chosen.random() < 0.4:
            prefix = chosen.randint(0, length * 8)
            mask = ((1 << (length * 8)) - 1 ^ ((1 << (length * 8 - prefix)) - 1)).to_bytes(length, 'big')
            loads.append(nb.bitwise(mask if chosen.random() < 0.8 else bytes(chosen.randrange(256) for _ in range(length))))
        interface = [nb.meta(chosen.choice((META_IIFNAME, META_OIFNAME))), nb.cmp(chosen.choice((nb.EQ, nb.NEQ)), chosen.choice((nb.ifname('lo'), b'lo', nb.ifname('eth0'), b'veth')))]
        comparison = loads + [nb.cmp(chosen.choice((nb.EQ, nb.NEQ)), data)]
        expressions = (interface + comparison if chosen.random() < 0.5 else comparison + interface) + [nb.verdict(nb.DROP)]
        agrees(nb.rule(*expressions, family=family), family)


def test_plain_layouts_of_every_length_read_as_the_general_parse_reads_them():
    """The shortcut's parse of the expressions, cut at every byte and with odd elements appended, is
    the general parse's (names, data) or None."""
    from datadog_checks.loopback_traffic.nf_tables import expressions_of
    from datadog_checks.loopback_traffic.nft_decode import _PASSED_OVER, _PLAIN_NAMES, _plain_expressions

    rule = nb.rule(nb.meta(META_L4PROTO), nb.cmp(nb.EQ, b'\x06'), nb.payload(NETWORK, 16, 4), nb.cmp(nb.EQ, bytes([10, 96, 0, 1])),
                   nb.compat_match('comment', 0, b'svc'.ljust(256, b'\0')), nb.counter(), nb.verdict(nb.JUMP, 'KUBE-SVC-X'))
    raw = rule.raw_expressions
    candidates = [raw[:cut] for cut in range(len(raw) + 1)]
    candidates += [raw + tail for tail in (b'\x04\x00\x01\x00', b'\x08\x00\x01\x00\x04\x00\x01\x00', b'\x06\x00\x02\x00ab\0\0', b'\x04\x00')]
    for candidate in candidates:
        plain = _plain_expressions(candidate)
        assert (_plain_expressions(candidate, read=False) is None) == (plain is None), candidate
        if plain is None:
            continue
        general = [(expression.name, expression.data) for expression in expressions_of(candidate)]
        shown = {name for name in _PLAIN_NAMES.values()}
        expected = [(name if name in shown else '', data if name in shown and name not in _PASSED_OVER else b'') for name, data in general]
        assert plain == expected, candidate


# ----------------------------------------------------------------------------- real rulesets: verdicts and deciding rules

_READER = textwrap.dedent('''
    import base64, pickle, sys
    from datadog_checks.loopback_traffic import netlink
    sys.stdout.write(base64.b64encode(pickle.dumps(netlink.read_ruleset(timeout=120))).decode())
''')


def _read_kernel(ns) -> KernelRuleset:
    proc = ns.run(['python3', '-c', _READER], timeout=300, check=True)
    return pickle.loads(base64.b64decode(proc.stdout))


def _sources(kernel, family, **decoding):
    sources = []
    for nf_family in (('ip', 'inet', 'netdev') if family == IPV4 else ('ip6', 'inet', 'netdev')):
        tables = decode_tables(kernel, nf_family, **decoding)
        if tables:
            sources.append(Source(Ruleset({table.name: table for table in tables})))
    return sources or [Source(Ruleset({}))]


def assert_same_verdicts(kernel):
    """Every compliance rule, both families: with the shortcuts (and a cache used twice, as between
    two runs) exactly the results of decoding every rule reached; and every rule of the ruleset's
    iptables tables agrees rule by rule."""
    cache = DecodeCache()
    for rule in (part for definition in RULES for part in definition.parts):
        full = evaluate(rule, _sources(kernel, rule.family, shortcuts=False))
        for _ in range(2):
            fast = evaluate(rule, _sources(kernel, rule.family, cache=cache))
            assert fast == full, (rule, fast, full)
    for (nf_family, _table, _chain), rules in kernel.rules.items():
        if nf_family in ('ip', 'ip6'):
            for raw in rules:
                if b'lookup\0' not in raw.raw_expressions:
                    agrees(raw, nf_family)


def test_corpora_give_the_same_verdicts(netns):
    require_tools('iptables-nft-restore', 'ip6tables-nft-restore')
    netns.restore(IPTABLES_RULES)
    assert_same_verdicts(_read_kernel(netns))
    for name in ('compliant', 'misordered', 'ufw'):
        with open(os.path.join(EXAMPLES, name + '.rules'), encoding='utf-8') as saved:
            netns.restore(saved.read())
        assert_same_verdicts(_read_kernel(netns))
    netns.restore(CIS_V4)
    assert_same_verdicts(_read_kernel(netns))


@pytest.mark.parametrize('preset', ['cis', 'ufw', 'k8s-1k', 'k8s-1k:bottom'])
def test_benchmark_presets_give_the_same_verdicts(netns, preset):
    require_tools('iptables-nft-restore', 'ip6tables-nft-restore')
    name, _, position = preset.partition(':')
    chosen = generate.PRESETS[name].with_cis(position) if position else generate.PRESETS[name]
    netns.restore(chosen.text('ipv4'), 'ipv4')
    netns.restore(chosen.text('ipv6'), 'ipv6')
    assert_same_verdicts(_read_kernel(netns))


# ----------------------------------------------------------------------------- what is kept between runs

_BETWEEN_RUNS = textwrap.dedent('''
    import dataclasses, subprocess, sys, types
    from datadog_checks.loopback_traffic import netlink
    from datadog_checks.loopback_traffic.ipset import read_sets
    from datadog_checks.loopback_traffic.ipset_contents import SetsRead
    from datadog_checks.loopback_traffic.collect import KernelCache, read_kernel
    from datadog_checks.loopback_traffic.evaluator import Source, evaluate
    from datadog_checks.loopback_traffic.model import Ruleset
    from datadog_checks.loopback_traffic.nft_decode import DecodeCache, decode_tables
    from datadog_checks.loopback_traffic.requirements import IPV4, RULES

    def sources(kernel, family, **decoding):
        found = []
        for nf_family in (('ip', 'inet', 'netdev') if family == IPV4 else ('ip6', 'inet', 'netdev')):
            tables = decode_tables(kernel, nf_family, **decoding)
            if tables:
                found.append(Source(Ruleset({table.name: table for table in tables})))
        return found or [Source(Ruleset({}))]

    options = types.SimpleNamespace(timeout=60, max_output_bytes=1 << 30, network_namespace=None)
    kernel_cache, decoded = KernelCache(), DecodeCache()
    for step in sys.stdin.read().split(chr(30)):
        if step.strip():
            subprocess.run(['sh', '-c', step], check=True)
        full_kernel = dataclasses.replace(netlink.read_ruleset(timeout=60), ipsets=lambda: SetsRead(read_sets()))
        for rule in (part for definition in RULES for part in definition.parts):
            def walk(kernel, rule=rule):
                return evaluate(rule, sources(kernel, rule.family, cache=decoded))
            _, fast, _ = read_kernel(options, kernel_cache, rule.family, walk, rule.name)
            full = evaluate(rule, sources(full_kernel, rule.family, shortcuts=False))
            if fast != full:
                print('DIFFERENT', repr(step), rule.name, rule.family, fast.status, full.status, fast.rules_on_path, full.rules_on_path)
                for mine, theirs in zip(fast.requirements, full.requirements):
                    if mine != theirs:
                        print(mine)
                        print(theirs)
                sys.exit(1)
    print('same')
''')


def test_what_is_kept_between_runs_gives_the_same_verdicts(netns):
    """The chains, decoded rules and walks kept from one generation to the next (a kube-proxy sync,
    a policy changed with the rules unchanged, a chain rewritten) give what a fresh full decode gives."""
    require_tools('iptables-nft-restore', 'ip6tables-nft-restore', 'iptables-nft', 'nft', 'ipset')
    chosen = generate.PRESETS['k8s-1k'].with_cis('bottom')
    netns.restore(chosen.text('ipv4'), 'ipv4')
    netns.restore(chosen.text('ipv6'), 'ipv6')
    def restore(text):
        return 'printf "{}" | iptables-nft-restore --noflush'.format(text.replace('\n', '\\n'))

    steps = [
        '',
        'iptables-nft -P INPUT DROP',
        'iptables-nft -P INPUT ACCEPT; ' + restore('*nat\n:OUTPUT DROP [0:0]\nCOMMIT\n'),
        restore('*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n*filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n'),
        'nft insert rule ip nat KUBE-NODEPORTS tcp dport 30000 drop',
        'iptables-nft -I OUTPUT -o lo -j ACCEPT',
        'nft insert rule ip nat KUBE-SERVICES ip daddr 127.0.0.1 drop',
        'iptables-nft -t nat -I KUBE-SERVICES -s 10.0.0.0/8 -j RETURN',
        # a set's contents change, the rule that looks it up stays the same bytes, in a chain jumped to
        "nft add table inet t; nft add set inet t s '{ type ipv4_addr; flags interval; }'; nft add element inet t s '{ 10.0.0.0/8 }'; "
        "nft add chain inet t x; nft add rule inet t x ip saddr @s drop; "
        "nft add chain inet t input '{ type filter hook input priority 0; policy accept; }'; nft add rule inet t input jump x",
        "nft add element inet t s '{ 127.0.0.0/8 }'",
        "nft delete element inet t s '{ 127.0.0.0/8 }'",
        # an ipset's contents change behind an xtables set match that stays the same bytes
        'ipset create lt-spoof hash:net; iptables-nft -I INPUT -m set --match-set lt-spoof src ! -i lo -j DROP',
        'ipset add lt-spoof 127.0.0.0/8',
        'ipset del lt-spoof 127.0.0.0/8; ipset add lt-spoof 127.0.0.0/9',
        'ipset add lt-spoof 127.128.0.0/9',
        'ipset flush lt-spoof',
    ]
    proc = netns.run(['python3', '-c', _BETWEEN_RUNS], input=chr(30).join(steps), timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith('same'), proc.stdout[-3000:] + proc.stderr[-3000:]
