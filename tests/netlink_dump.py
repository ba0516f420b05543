"""Run the netlink reader in the current network namespace and print JSON; started by
tests/test_netlink.py as ``ip netns exec NS python3 tests/netlink_dump.py COMMAND [ARGS]``.

The package is loaded without its ``__init__`` (which imports the whole check), see :func:`load`.

Commands:
  ruleset                    everything, read with read_ruleset
  generation                 the generation id
  rules FAMILY TABLE [CHAIN] the handles of a filtered rule dump
  sets FAMILY TABLE          the sets of a table (names and flags)
  raw                        the received datagrams of each kind of dump, base64
  consistent                 read_consistent around a read that adds a rule (nft) in its first N tries
  time                       seconds: all_rules(), a bare dump counting bytes
  error                      generation(); prints the error
"""
import base64
import importlib
import json
import os
import socket
import subprocess
import sys
import time
import types

#: netlink.py and nf_tables.py are loaded as this private package (they import nothing else of the
#: check), so that the helper and tests/test_netlink.py depend on those two files only.
PACKAGE = '_loopback_traffic_netlink'
SOURCE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'loopback_traffic')


def load():
    """``(netlink, nf_tables)`` modules, loaded from the source tree without the package ``__init__``."""
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [SOURCE_DIR]
        sys.modules[PACKAGE] = package
    return importlib.import_module(PACKAGE + '.netlink'), importlib.import_module(PACKAGE + '.nf_tables')


netlink, nf_tables = load()
NFT_SET_ELEM_INTERVAL_END = nf_tables.NFT_SET_ELEM_INTERVAL_END


def _ruleset():
    ruleset = netlink.read_ruleset(timeout=30)
    return {
        'generation': ruleset.generation,
        'tables': [[t.family, t.name, t.flags, t.handle] for t in ruleset.tables],
        'chains': [
            {
                'family': c.family,
                'table': c.table,
                'name': c.name,
                'handle': c.handle,
                'hook': c.hook,
                'prio': c.priority,
                'type': c.type,
                'policy': c.policy,
                'devices': list(c.devices),
                'flags': c.flags,
                'rules': [[r.handle, r.comment, r.position, len(r.expressions)] for r in ruleset.rules[(c.family, c.table, c.name)]],
            }
            for c in ruleset.chains
        ],
        'sets': [
            {
                'family': s.family,
                'table': s.table,
                'name': s.name,
                'flags': s.flags,
                'key_type': s.key_type,
                'key_length': s.key_length,
                'data_type': s.data_type,
                'data_length': s.data_length,
                'elements': [
                    [e.key.hex(), None if e.key_end is None else e.key_end.hex(), None if e.data is None else e.data.hex(), e.flags]
                    for e in s.elements
                ],
                'starts': sum(1 for e in s.elements if not e.flags & NFT_SET_ELEM_INTERVAL_END),
            }
            for s in ruleset.sets.values()
        ],
    }


class _Recording(netlink.NetlinkReader):
    def __init__(self):
        super().__init__(timeout=30)
        self.datagrams = []

    def _receive(self):
        data = super()._receive()
        self.datagrams.append(base64.b64encode(data).decode('ascii'))
        return data


def _raw():
    captured = {}
    with _Recording() as reader:
        calls = {
            'generation': reader.generation,
            'tables': reader.tables,
            'chains': reader.chains,
            'rules': reader.all_rules,
            'sets': reader.sets,
        }
        for name, call in calls.items():
            reader.datagrams = []
            call()
            captured[name] = reader.datagrams
        elements = []
        for found in reader.sets():
            reader.datagrams = []
            reader.set_elements(found.family, found.table, found.name)
            elements.extend(reader.datagrams)
        captured['elements'] = elements
    return captured


def _consistent(changes):
    tries = []

    def read(reader):
        tries.append(reader.generation())
        rules = reader.all_rules()
        if len(tries) <= changes:
            subprocess.run(['nft', 'add', 'rule', 'inet', 't', 'c', 'counter'], check=True)
        return len(rules)

    with netlink.NetlinkReader() as reader:
        try:
            generation, count = netlink.read_consistent(reader, read, attempts=3)
        except netlink.RulesetKeptChanging as exc:
            return {'error': str(exc), 'times': exc.times, 'tries': len(tries)}
    return {'generation': generation, 'rules': count, 'tries': len(tries)}


def _bare_dump_bytes():
    """A GETRULE dump that only counts the bytes (the floor for any reader in Python)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.sendto(netlink.encode_request(netlink.NFT_MSG_GETRULE, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP, 1), (0, 0))
    total = 0
    while True:
        data = sock.recv(1 << 17)
        total += len(data)
        # The last datagram of a dump holds NLMSG_DONE (type 3), alone.
        if len(data) >= 20 and int.from_bytes(data[4:6], sys.byteorder) == netlink.NLMSG_DONE:
            break
    sock.close()
    return total


def _time(repeat):
    best = {}
    for _ in range(repeat):
        with netlink.NetlinkReader(timeout=60) as reader:
            start = time.perf_counter()
            rules = reader.all_rules()
            elapsed = time.perf_counter() - start
            best['all_rules'] = min(best.get('all_rules', elapsed), elapsed)
            best['rules'] = len(rules)
            best['bytes'] = reader.bytes_received
            start = time.perf_counter()
            for rule in rules:
                rule.expressions
            elapsed = time.perf_counter() - start
            best['decode_expressions'] = min(best.get('decode_expressions', elapsed), elapsed)
        start = time.perf_counter()
        total = _bare_dump_bytes()
        elapsed = time.perf_counter() - start
        best['bare_dump'] = min(best.get('bare_dump', elapsed), elapsed)
        best['bare_bytes'] = total
    return best


def main(argv):
    command, args = argv[0], argv[1:]
    try:
        if command == 'ruleset':
            result = _ruleset()
        elif command == 'generation':
            with netlink.NetlinkReader() as reader:
                result = reader.generation()
        elif command == 'rules':
            with netlink.NetlinkReader() as reader:
                rules = reader.rules(*args)
                result = [[r.family, r.table, r.chain, r.handle] for r in rules]
        elif command == 'sets':
            with netlink.NetlinkReader() as reader:
                result = [[s.name, s.flags] for s in reader.sets(*args)]
        elif command == 'raw':
            result = _raw()
        elif command == 'consistent':
            result = _consistent(int(args[0]))
        elif command == 'time':
            result = _time(int(args[0]) if args else 3)
        elif command == 'error':
            with netlink.NetlinkReader() as reader:
                result = reader.generation()
        else:
            raise SystemExit('unknown command {!r}'.format(command))
    except netlink.NetlinkError as exc:
        result = {'error': str(exc), 'type': type(exc).__name__, 'errno': exc.errno}
    json.dump(result, sys.stdout)
    sys.stdout.write('\n')


if __name__ == '__main__':
    main(sys.argv[1:])
