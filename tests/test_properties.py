"""Property tests: the model survives a render/parse round trip; the evaluator always answers."""
import itertools
from types import MappingProxyType

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datadog_checks.loopback_traffic.evaluator import EFFECTIVE, LITERAL, Source, evaluate
from datadog_checks.loopback_traffic.model import BUILTIN_CHAINS, IPTABLES_BASE_CHAINS, Counters, Match, Option, Rule, Ruleset, Table, Target
from datadog_checks.loopback_traffic.parser import EVALUATED_TABLES, ParseError, UnreadTablesFilter, parse_rule, parse_ruleset, tokenize
from datadog_checks.loopback_traffic.model import Chain
from datadog_checks.loopback_traffic.render import render_ruleset
from datadog_checks.loopback_traffic.requirements import COMPLIANCE_RULES
from datadog_checks.loopback_traffic.results import RuleResult

USER_CHAINS = ['ufw-before-input', 'KUBE-FIREWALL', 'A', 'B']
ADDRESSES = ['127.0.0.0/8', '127.0.0.1/32', '127.0.0.0/7', '0.0.0.0/0', '10.0.0.0/8', '::1/128', '::/0', 'fe80::/10']
INTERFACES = ['lo', 'lo+', '+', 'eth0', 'eth+', 'l+']
TEXT = st.text(alphabet=st.characters(blacklist_categories=('Cs', 'Cc')) | st.sampled_from(' \t"\\!-'), max_size=12)

negated = st.booleans()
builtin_match = st.one_of(
    st.builds(lambda n, v, neg: Match('', (Option(n, (v,), neg),)), st.sampled_from(['-s', '-d']), st.sampled_from(ADDRESSES), negated),
    st.builds(lambda n, v, neg: Match('', (Option(n, (v,), neg),)), st.sampled_from(['-i', '-o']), st.sampled_from(INTERFACES), negated),
    st.builds(lambda v, neg: Match('', (Option('-p', (v,), neg),)), st.sampled_from(['all', 'tcp', 'udp', 'icmp']), negated),
    st.builds(lambda neg: Match('', (Option('-f', (), neg),)), negated),
)
module_match = st.one_of(
    st.builds(lambda text: Match('comment', (Option('--comment', (text,)),)), TEXT),
    st.builds(lambda states, neg: Match('conntrack', (Option('--ctstate', (states,), neg),)), st.sampled_from(['NEW', 'RELATED,ESTABLISHED', 'INVALID']), negated),
    st.builds(lambda port, neg: Match('tcp', (Option('--dport', (port,), neg),)), st.sampled_from(['22', '80:90']), negated),
    st.just(Match('addrtype', (Option('--src-type', ('LOCAL',)),))),
    st.just(Match('frobnicate', (Option('--flag', ()), Option('--level', ('1', '2'))))),
)
target = st.one_of(
    st.none(),
    st.sampled_from([Target('ACCEPT'), Target('DROP'), Target('RETURN'), Target('QUEUE'), Target('LOG', ('--log-prefix', 'lo: x'))]),
    st.just(Target('REJECT', ('--reject-with', 'icmp-port-unreachable'))),
    st.builds(Target, st.sampled_from(USER_CHAINS + ['UNDECLARED']), st.just(()), st.booleans()),
)
counters = st.one_of(st.none(), st.builds(Counters, st.integers(0, 10**12), st.integers(0, 10**15)))


@st.composite
def rulesets(draw):
    tables = {}
    for table_name in draw(st.sets(st.sampled_from(sorted(BUILTIN_CHAINS)), max_size=5)):
        builtins = BUILTIN_CHAINS[table_name]
        user = draw(st.lists(st.sampled_from(USER_CHAINS), unique=True, max_size=4))
        chains = {}
        for chain_name in list(builtins) + user:
            rules = draw(
                st.lists(
                    st.builds(
                        Rule,
                        st.just(chain_name),
                        st.lists(st.one_of(builtin_match, module_match), max_size=4).map(tuple),
                        target,
                        counters,
                    ),
                    max_size=5,
                )
            )
            from datadog_checks.loopback_traffic.model import RawRule
            from datadog_checks.loopback_traffic.render import render_rule

            raw = tuple(RawRule(0, render_rule(rule)) for rule in rules)
            policy = draw(st.sampled_from(['ACCEPT', 'DROP'])) if chain_name in builtins else None
            chains[chain_name] = Chain(
                chain_name, policy, raw, parse_rule, draw(counters) if policy else None, base=IPTABLES_BASE_CHAINS.get((table_name, chain_name))
            )
        tables[table_name] = Table(table_name, MappingProxyType(chains))
    return Ruleset(MappingProxyType(tables)), tables


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rulesets())
def test_render_then_parse_gives_the_same_model(generated):
    ruleset, _ = generated
    assert parse_ruleset(render_ruleset(ruleset)) == ruleset


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rulesets(), rulesets())
def test_evaluator_always_answers(first, second):
    for rule in COMPLIANCE_RULES:
        for mode in (EFFECTIVE, LITERAL):
            result = evaluate(rule, [Source(first[0]), Source(second[0], label='legacy')], mode)
            assert isinstance(result, RuleResult)
            assert len(result.requirements) == 3 or result.error


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=400) | st.lists(st.sampled_from(['*filter', ':INPUT ACCEPT [0:0]', ':X - [0:0]', '-A INPUT -j X', '-A X -g INPUT', 'COMMIT', '# x', '-A INPUT "', '-P INPUT DROP', '-N X', '']), max_size=12).map('\n'.join))
def test_parser_raises_only_parse_errors(text):
    try:
        ruleset = parse_ruleset(text)
    except ParseError:
        return
    for rule in COMPLIANCE_RULES:
        assert isinstance(evaluate(rule, [Source(ruleset)]), RuleResult)


def _reference_tokenize(text):
    """iptables-restore's add_param_to_argv, character by character: the oracle for the parser's
    regular-expression tokeniser. Returns (value, quoted) pairs, or None for an unterminated quote."""
    tokens, buffer = [], []
    quote_open = escaped = quoted = False
    for char in text:
        if quote_open:
            if escaped:
                buffer.append(char)
                escaped = False
            elif char == '\\':
                escaped = True
            elif char != '"':
                buffer.append(char)
            else:
                quote_open = False  # the closing quote ends the argument, even an empty one
                tokens.append((''.join(buffer), True))
                buffer, quoted = [], False
            continue
        if char == '"':
            quote_open = quoted = True
        elif char not in ' \t\n':
            buffer.append(char)
        elif buffer:
            tokens.append((''.join(buffer), quoted))
            buffer, quoted = [], False
    if quote_open:
        return None
    if buffer:
        tokens.append((''.join(buffer), quoted))
    return tokens


@settings(max_examples=3000, deadline=None)
@given(st.text(alphabet=st.sampled_from(' \t\n"\\ab-!\'') | st.characters(), max_size=40))
def test_tokenizer_splits_like_iptables_restore(text):
    expected = _reference_tokenize(text)
    try:
        tokens = tokenize(text)
    except ParseError:
        assert expected is None
        return
    assert [(str(token), token.quoted) for token in tokens] == expected


# --- streaming: the unread tables dropped as the text passes ---------------------------------------

SAVE_LINES = st.sampled_from(
    [
        '*filter', '*nat', '*raw', '*mangle', '*security', '*nat ', '*filter\r', '* nat', '*nat\u00a0', '*filter\u00a0', '*bad name',
        'COMMIT', 'COMMIT\r', 'COMMIT ', 'COMMIT\x1c', 'COMMITTED', ' COMMIT', ':INPUT ACCEPT [0:0]', ':OUTPUT DROP [1:2]',
        ':A - [0:0]', ':PREROUTING ACCEPT [0:0]', '-A INPUT -i lo -j ACCEPT', '-A OUTPUT -o lo -j ACCEPT',
        '-A INPUT -s 127.0.0.0/8 -j DROP', '-A A -j RETURN', '-A INPUT -j A', '-A PREROUTING -j DNAT --to-destination 10.0.0.1',
        '[1:2] -A INPUT -j ACCEPT', '-A INPUT -m comment --comment "x y', "# Table `nat' is incompatible, use 'nft' tool.",
        '# Warning: iptables-legacy tables present, use iptables-legacy-save to see them', '', '   ', 'garbage', '\u00e9\x00',
        '# Generated by iptables-save v1.8.9 on Sat Nov 21 10:45:01 2026', '#', "# Table `filter' is incompatible, use 'nft' tool.\r",
    ]
)


def _outcome(text):
    try:
        ruleset = parse_ruleset(text, tables=EVALUATED_TABLES)
        return ruleset, [chain.rules for table in ruleset.tables.values() for chain in table.chains.values()]
    except ParseError as error:
        return ('error', error.line, str(error))


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(SAVE_LINES, max_size=30), st.booleans(), st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_dropping_unread_tables_while_streaming_parses_the_same(lines, final_newline, chunk_sizes):
    data = ('\n'.join(lines) + ('\n' if final_newline and lines else '')).encode('utf-8', 'surrogateescape')
    stream = UnreadTablesFilter(EVALUATED_TABLES)
    position, sizes = 0, itertools.cycle(chunk_sizes)
    while position < len(data):
        size = next(sizes)
        stream.feed(data[position : position + size])
        position += size
    kept = stream.value()
    assert kept.count(b'\n') <= data.count(b'\n')
    assert _outcome(kept.decode('utf-8', 'surrogateescape')) == _outcome(data.decode('utf-8', 'surrogateescape'))


FILTER_ONLY = frozenset({'filter'})


def test_dropping_unread_tables_keeps_only_the_evaluated_ones():
    nat = ''.join('-A KUBE-SERVICES -d 10.0.{}.{}/32 -j KUBE-SVC-X\n'.format(i // 250, i % 250) for i in range(5000))
    text = '*nat\n:KUBE-SERVICES - [0:0]\n' + nat + 'COMMIT\n*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\nCOMMIT\n'
    stream = UnreadTablesFilter(FILTER_ONLY)
    for start in range(0, len(text), 4096):
        stream.feed(text[start : start + 4096].encode())
    kept = stream.value()
    assert b'KUBE' not in kept and len(kept) < len(text) // 20
    ruleset = parse_ruleset(kept.decode(), tables=FILTER_ONLY)
    assert ruleset == parse_ruleset(text, tables=FILTER_ONLY)
    # The save's timestamps go, so the text of an unchanged ruleset is the same on every run.
    stamped = UnreadTablesFilter(FILTER_ONLY)
    stamped.feed(('# Generated by iptables-save v1.8.9 on Sat Nov 21 10:45:01 2026\n' + text).encode())
    assert stamped.value() == b'\n' + kept
    assert ruleset.chain('filter', 'INPUT').rules[0].line == 5006


def test_a_comment_that_looks_like_an_option_is_quoted_and_read_back():
    """Found by the property above: ``--comment --match`` was rendered bare and read as an option."""
    text = '*filter\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m comment --comment "--match" -j REJECT\nCOMMIT\n'
    ruleset = parse_ruleset(text)
    assert parse_ruleset(render_ruleset(ruleset)) == ruleset
    assert '--comment "--match"' in render_ruleset(ruleset)
