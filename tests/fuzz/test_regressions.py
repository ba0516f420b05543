"""Inputs worth keeping from the fuzzing runs (issue 6), checked with the fuzzers' property (``harness.py``).

The runs (atheris: 329,799 executions in 11 minutes; hypothesis: 60,000 examples in 8 minutes) found no
input that breaks the property. What is kept here are the shapes they exercised that a change to the parser
or the evaluator could most easily break; add every future crashing input (libFuzzer's ``crash-*`` file or
hypothesis's falsifying example) to ``CASES``.
"""
import pytest

from . import harness

CASES = {
    # Lone surrogates (from bytes that are not UTF-8) in a chain name, a target and a comment.
    'not-utf8-names': b'*filter\n:INPUT ACCEPT [0:0]\n:\xff - [0:0]\n-A INPUT -j \xff\n-A \xff -m comment --comment "\xe9" -g \xfe\nCOMMIT\n',
    # A text made of surrogates only, and an encoded surrogate (invalid UTF-8 in a way surrogateescape keeps).
    'surrogatepass': '-A INPUT -s \ud800 -j DROP\n'.encode('utf-8', 'surrogatepass'),
    # A loop of jumps reached by part of the class only, and a goto to an undeclared chain.
    'loop-and-goto': b'*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A PREROUTING -p udp -j A\n'
    b'-A A -p udp -j B\n-A B -j A\nCOMMIT\n*filter\n:INPUT DROP [0:0]\n-A INPUT -i lo -g NOWHERE\nCOMMIT\n',
    # A jump to a built-in chain, RETURN from a built-in chain, and NFQUEUE.
    'builtin-jump': b'*filter\n:INPUT DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -p tcp -j OUTPUT\n-A INPUT -i lo -j RETURN\n'
    b'-A OUTPUT -o lo -j NFQUEUE --queue-num 1\nCOMMIT\n',
    # Listing format with counters, the old "! after the option" forms, and a policy with counters.
    'listing-old-forms': b'-P INPUT DROP -c 1 2\n-N A\n-A INPUT -s ! 127.0.0.0/8 -j A\n-A INPUT -p tcp --dport ! 22 -c 5 300 -j ACCEPT\n'
    b'-A A -i lo -j ACCEPT\n',
    # Both warnings, in and outside a table, and a table that appears twice.
    'warnings': b"# Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n*filter\n"
    b"# Table `filter' is incompatible, use 'nft' tool.\n:INPUT ACCEPT [0:0]\nCOMMIT\n"
    b"# Table `nat' contains incompatible base-chains, use 'nft' tool to list them.\n*filter\nCOMMIT\n",
    # Quotes: escaped quotes, an unterminated quote, an empty quoted argument, a quoted chain name.
    'quotes': b'*filter\n:INPUT ACCEPT [0:0]\n:"A B" - [0:0]\n-A INPUT -m comment --comment "a \\"b\\" c" -j ACCEPT\n'
    b'-A INPUT -m comment --comment "" -j "A B"\n-A "A B" -m comment --comment "open -j DROP\nCOMMIT\n',
    # Address forms the classifier must not choke on: masks, host names, lists, wrong family, bad prefixes.
    'addresses': b'*filter\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A INPUT -s 127.0.0.0/255.0.255.0 -j DROP\n'
    b'-A INPUT -s localhost -j DROP\n-A INPUT ! -s 127.0.0.0/8,::1 -j DROP\n-A INPUT -d 127.0.0.1/33 -j ACCEPT\n'
    b'-A INPUT -s ::ffff:127.0.0.1/128 -j DROP\n-A OUTPUT -o lo+ -d 0.0.0.0/0 -j ACCEPT\nCOMMIT\n',
}


@pytest.mark.parametrize('data', list(CASES.values()), ids=list(CASES))
def test_fuzzing_regressions(data):
    harness.check_bytes(data)
