"""A tiny encoder of nf_tables rule expressions, for building :class:`KernelRule` fixtures byte by
byte in the tests (the inverse of what the kernel sends in NFTA_RULE_EXPRESSIONS). Test-only."""
import struct
import sys
from typing import Optional

from datadog_checks.loopback_traffic.nf_tables import KernelRule, KernelSet, SetElement

NATIVE = sys.byteorder


def attr(kind: int, payload: bytes) -> bytes:
    padding = b'\0' * ((4 - len(payload) % 4) % 4)
    return struct.pack('=HH', 4 + len(payload), kind) + payload + padding


def u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack('>I', value & 0xFFFFFFFF))


def u64(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack('>Q', value))


def text(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b'\0')


def data(kind: int, value: bytes) -> bytes:
    """A nested NFTA_DATA_VALUE."""
    return attr(kind, attr(1, value))


def expr(name: str, *attrs: bytes) -> bytes:
    return attr(1, text(1, name) + attr(2, b''.join(attrs)))


def rule(*expressions: bytes, chain: str = 'INPUT', table: str = 'filter', family: str = 'ip', handle: int = 7,
         comment: Optional[str] = None) -> KernelRule:
    userdata = b''
    if comment is not None:
        value = comment.encode() + b'\0'
        userdata = bytes((0, len(value))) + value
    return KernelRule(family, table, chain, handle, raw_expressions=b''.join(expressions), userdata=userdata)


# -- loads
def payload(base: int, offset: int, length: int, dreg: int = 1) -> bytes:
    return expr('payload', u32(1, dreg), u32(2, base), u32(3, offset), u32(4, length))


def meta(key: int, dreg: int = 1) -> bytes:
    return expr('meta', u32(2, key), u32(1, dreg))


def meta_set(key: int, sreg: int = 1) -> bytes:
    return expr('meta', u32(2, key), u32(3, sreg))


def ct(key: int, dreg: int = 1) -> bytes:
    return expr('ct', u32(2, key), u32(1, dreg))


def ct_set(key: int, sreg: int = 1) -> bytes:
    return expr('ct', u32(2, key), u32(4, sreg))


def fib(result: int, flags: int, dreg: int = 1) -> bytes:
    return expr('fib', u32(1, dreg), u32(2, result), u32(3, flags))


def bitwise(mask: bytes, xor: Optional[bytes] = None, sreg: int = 1, dreg: int = 1, op: Optional[int] = None) -> bytes:
    attrs = [u32(1, sreg), u32(2, dreg), u32(3, len(mask)), data(4, mask), data(5, xor or bytes(len(mask)))]
    if op is not None:
        attrs.append(u32(6, op))
    return expr('bitwise', *attrs)


# -- comparisons
EQ, NEQ, LT, LTE, GT, GTE = range(6)


def cmp(op: int, value: bytes, sreg: int = 1) -> bytes:
    return expr('cmp', u32(1, sreg), u32(2, op), data(3, value))


def range_(op: int, low: bytes, high: bytes, sreg: int = 1) -> bytes:
    return expr('range', u32(1, sreg), u32(2, op), data(3, low), data(4, high))


def lookup(set_name: str, sreg: int = 1, dreg: Optional[int] = None, inverted: bool = False) -> bytes:
    attrs = [text(1, set_name), u32(2, sreg), u32(5, 1 if inverted else 0)]
    if dreg is not None:
        attrs.append(u32(3, dreg))
    return expr('lookup', *attrs)


# -- statements
ACCEPT, DROP, QUEUE, CONTINUE, BREAK, JUMP, GOTO, RETURN = 1, 0, 3, -1, -2, -3, -4, -5


def verdict_data(code: int, chain: Optional[str] = None) -> bytes:
    """The nested NFTA_DATA_VERDICT of a verdict (as in an immediate or a verdict map element)."""
    return attr(2, u32(1, code) + (text(2, chain) if chain else b''))


def verdict(code: int, chain: Optional[str] = None) -> bytes:
    return expr('immediate', u32(1, 0), attr(2, verdict_data(code, chain)))


def immediate(dreg: int, value: bytes) -> bytes:
    return expr('immediate', u32(1, dreg), data(2, value))


def counter() -> bytes:
    return expr('counter', u64(1, 0), u64(2, 0))


def compat_match(name: str, revision: int, info: bytes) -> bytes:
    return expr('match', text(1, name), u32(2, revision), attr(3, info))


def compat_target(name: str, revision: int, info: bytes) -> bytes:
    return expr('target', text(1, name), u32(2, revision), attr(3, info))


# -- sets
def kernel_set(name: str, *elements: SetElement, flags: int = 0, key_length: int = 4, data_type: Optional[int] = None,
               complete: bool = True, family: str = 'inet', table: str = 't') -> KernelSet:
    return KernelSet(family, table, name, flags=flags, key_length=key_length, data_type=data_type, elements=tuple(elements),
                     complete=complete)


def element(key: bytes, end: bool = False, verdict_code: Optional[int] = None, chain: Optional[str] = None) -> SetElement:
    return SetElement(key, data=verdict_data(verdict_code, chain) if verdict_code is not None else None, flags=1 if end else 0)


def ifname(name: str, size: int = 16) -> bytes:
    return name.encode().ljust(size, b'\0')


def host32(value: int) -> bytes:
    return value.to_bytes(4, NATIVE)
