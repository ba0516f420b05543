"""Instance options -> validated :class:`Options`. Shared by the Agent check and the CLI. Pure: no I/O."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from . import waivers as waivers_option
from .evaluator import MODES
from .requirements import FAMILIES, IPV4, IPV6, RULE_NAMES, rule_named
from .waivers import InvalidWaiver, Waiver

LEGACY = 'legacy'
NFT = 'nft'
APPLICABILITY = ('auto', 'always')
PARTIAL = ('warning', 'critical', 'ok')
COLLECTION = ('auto', 'save')
# Options of mechanisms the netlink reader replaced: still accepted, with a warning in the log.
DEPRECATED_COLLECTION = 'listing'

DEFAULT_SAVE_COMMANDS: Mapping[Tuple[str, str], Tuple[str, ...]] = {
    (IPV4, NFT): ('iptables-save',),
    (IPV6, NFT): ('ip6tables-save',),
    (IPV4, LEGACY): ('iptables-legacy-save',),
    (IPV6, LEGACY): ('ip6tables-legacy-save',),
}
SAVE_COMMAND_OPTIONS: Mapping[Tuple[str, str], str] = {
    (IPV4, NFT): 'iptables_save_command',
    (IPV6, NFT): 'ip6tables_save_command',
    (IPV4, LEGACY): 'iptables_legacy_save_command',
    (IPV6, LEGACY): 'ip6tables_legacy_save_command',
}
DEFAULT_PROC_PATH = '/proc'
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_OUTPUT_BYTES = 100 * 1024 * 1024


# Every option of an instance: this check's own (assets/configuration/spec.yaml) and those of the
# Agent's `instances/default` template.
CHECK_OPTIONS = (
    'rules',
    'families',
    'applicability',
    'mode',
    'partial',
    'collection',
    'table_listing_interval',
    'iptables_save_command',
    'ip6tables_save_command',
    'iptables_legacy_save_command',
    'ip6tables_legacy_save_command',
    'network_namespace',
    'use_sudo',
    'timeout',
    'max_output_bytes',
    'ruleset_files',
    'proc_path',
    'host_root',
    'dpkg_status_file',
    'rpm_command',
    'rpm_database_path',
    'waivers',
)
STANDARD_OPTIONS = (
    'tags',
    'service',
    'min_collection_interval',
    'empty_default_hostname',
    'metric_patterns',
    'disable_generic_tags',
    'enable_legacy_tags_normalization',
)
# Keys the Agent itself reads in an instance of any check, next to the template's.
AGENT_OPTIONS = ('name', 'loader', 'ha_enabled', 'check_tag_cardinality')
KNOWN_OPTIONS = CHECK_OPTIONS + STANDARD_OPTIONS + AGENT_OPTIONS


class InvalidConfiguration(ValueError):
    """An option has a value the check cannot use; the message names the option and what is allowed."""


@dataclass(frozen=True)
class Options:
    rules: Tuple[str, ...] = RULE_NAMES  # the compliance rules to evaluate (where they apply)
    families: Tuple[str, ...] = FAMILIES  # the families of them to evaluate
    save_commands: Mapping[Tuple[str, str], Tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SAVE_COMMANDS))
    use_sudo: bool = False
    timeout: float = DEFAULT_TIMEOUT
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    ruleset_files: Mapping[str, str] = field(default_factory=dict)
    applicability: str = 'auto'
    mode: str = 'effective'
    partial: str = 'warning'
    collection: str = 'auto'
    proc_path: str = DEFAULT_PROC_PATH
    host_root: str = '/'  # where the host's / is mounted: its /etc (systemd units, ufw.conf) is read there
    network_namespace: Optional[str] = None  # judge this namespace (e.g. /host/proc/1/ns/net), not the Agent's
    dpkg_status_file: str = '/var/lib/dpkg/status'
    rpm_command: Tuple[str, ...] = ('rpm',)
    rpm_database_path: str = '/var/lib/rpm'
    tags: Tuple[str, ...] = ()
    waivers: Tuple[Waiver, ...] = ()  # applied to each result after evaluation (waivers.apply)
    # What the configuration asks for that the check no longer does, one sentence each, for the log.
    deprecations: Tuple[str, ...] = ()


def _choice(instance: Mapping[str, Any], name: str, allowed: Tuple[str, ...], default: str) -> str:
    value = instance.get(name)
    if value is None:
        return default
    if value not in allowed:
        raise InvalidConfiguration('`{}` must be one of {}, not {!r}'.format(name, ', '.join(allowed), value))
    return str(value)


def _command(instance: Mapping[str, Any], name: str, default: Tuple[str, ...]) -> Tuple[str, ...]:
    value = instance.get(name)
    if value is None:
        return default
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidConfiguration(
            '`{}` must be a list of arguments, e.g. [nsenter, --net=/host/proc/1/ns/net, iptables-save], not {!r}'.format(
                name, value
            )
        )
    if not value or not all(isinstance(arg, str) and arg for arg in value):
        raise InvalidConfiguration('`{}` must be a non-empty list of non-empty strings, not {!r}'.format(name, value))
    return tuple(value)


def _path(instance: Mapping[str, Any], name: str, default: str) -> str:
    value = instance.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or not value:
        raise InvalidConfiguration('`{}` must be a path, not {!r}'.format(name, value))
    return value


def _optional_path(instance: Mapping[str, Any], name: str) -> Optional[str]:
    return _path(instance, name, '') or None


def _boolean(instance: Mapping[str, Any], name: str, default: bool) -> bool:
    value = instance.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidConfiguration('`{}` must be true or false, not {!r}'.format(name, value))
    return value


def _positive_number(instance: Mapping[str, Any], name: str, default: float, zero_allowed: bool = False) -> float:
    value = instance.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 if zero_allowed else value > 0):
        allowed = 'a number of seconds, 0 or more' if zero_allowed else 'a number greater than 0'
        raise InvalidConfiguration('`{}` must be {}, not {!r}'.format(name, allowed, value))
    return float(value)


def _rules(instance: Mapping[str, Any]) -> Tuple[str, ...]:
    value = instance.get('rules')
    if value is None:
        return RULE_NAMES
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise InvalidConfiguration('`rules` must be a non-empty list of rule names ({}), not {!r}'.format(', '.join(RULE_NAMES), value))
    for name in value:
        if name not in RULE_NAMES:
            close = difflib.get_close_matches(str(name), RULE_NAMES, n=1, cutoff=0.6)
            hint = 'did you mean {}?'.format(close[0]) if close else 'the rules are {}'.format(', '.join(RULE_NAMES))
            raise InvalidConfiguration('`rules` names an unknown rule {!r}: {}'.format(name, hint))
    return tuple(dict.fromkeys(value))


def _rules_of_families(instance: Mapping[str, Any]) -> Tuple[str, ...]:
    """The rules selected that cover a family of ``families``: all of them when ``rules`` names them,
    else every rule that covers one."""
    rules, families = _rules(instance), _families(instance)
    kept = tuple(name for name in rules if set(rule_named(name).families) & set(families))
    if instance.get('rules') is not None and kept != rules:
        left = [name for name in rules if name not in kept]
        raise InvalidConfiguration(
            '`rules` selects {} but `families` ({}) leaves out every family of it: add its family or remove it'.format(', '.join(left), ', '.join(families))
        )
    return kept


def _families(instance: Mapping[str, Any]) -> Tuple[str, ...]:
    value = instance.get('families')
    if value is None:
        return FAMILIES
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise InvalidConfiguration('`families` must be a non-empty list of ipv4 and/or ipv6, not {!r}'.format(value))
    for family in value:
        if family not in FAMILIES:
            raise InvalidConfiguration('`families` may hold ipv4 and ipv6 only, not {!r}'.format(family))
    return tuple(dict.fromkeys(value))


def _ruleset_files(instance: Mapping[str, Any]) -> Dict[str, str]:
    value = instance.get('ruleset_files')
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidConfiguration('`ruleset_files` must map ipv4 and/or ipv6 to a file path, not {!r}'.format(value))
    files = {}
    for family, path in value.items():
        if family not in (IPV4, IPV6):
            raise InvalidConfiguration('`ruleset_files` keys must be ipv4 or ipv6, not {!r}'.format(family))
        if path is None:
            continue
        if not isinstance(path, str) or not path:
            raise InvalidConfiguration('`ruleset_files.{}` must be a file path, not {!r}'.format(family, path))
        files[family] = path
    return files


def _tags(instance: Mapping[str, Any]) -> Tuple[str, ...]:
    value = instance.get('tags')
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(tag, str) for tag in value):
        raise InvalidConfiguration('`tags` must be a list of strings such as team:network, not {!r}'.format(value))
    return tuple(value)


def _save_commands(instance: Mapping[str, Any]) -> Dict[Tuple[str, str], Tuple[str, ...]]:
    """The save commands; a legacy one not configured goes through the same wrapper as its family's
    configured command (``nsenter ... iptables-save`` -> ``nsenter ... iptables-legacy-save``), and
    with ``network_namespace`` the commands not configured enter that namespace."""
    namespace = instance.get('network_namespace')
    enter: Tuple[str, ...] = ('nsenter', '--net=' + namespace) if isinstance(namespace, str) and namespace else ()
    commands = {key: _command(instance, name, enter + DEFAULT_SAVE_COMMANDS[key]) for key, name in SAVE_COMMAND_OPTIONS.items()}
    for family in FAMILIES:
        main = commands[(family, NFT)]
        if len(main) > 1 and instance.get(SAVE_COMMAND_OPTIONS[(family, LEGACY)]) is None:
            commands[(family, LEGACY)] = main[:-1] + DEFAULT_SAVE_COMMANDS[(family, LEGACY)]
    return commands


def _collection(instance: Mapping[str, Any]) -> str:
    if instance.get('collection') == DEPRECATED_COLLECTION:
        return 'auto'
    return _choice(instance, 'collection', COLLECTION, 'auto')


def _unknown_options(instance: Mapping[str, Any]) -> Tuple[str, ...]:
    """A key that is close to an option is a misspelling: an error naming the option. Any other unknown key
    is only reported (an Agent may add keys of its own): one sentence each, for the log."""
    unknown = []
    for key in instance:
        if key in KNOWN_OPTIONS:
            continue
        close = difflib.get_close_matches(str(key), CHECK_OPTIONS + STANDARD_OPTIONS, n=1, cutoff=0.75)
        if close:
            raise InvalidConfiguration('unknown option `{}`: did you mean `{}`?'.format(key, close[0]))
        unknown.append('unknown option `{}` is ignored'.format(key))
    return tuple(unknown)


def _waivers(instance: Mapping[str, Any]) -> Tuple[Waiver, ...]:
    try:
        return waivers_option.parse(instance.get('waivers'))
    except InvalidWaiver as error:
        raise InvalidConfiguration(str(error))


def _deprecations(instance: Mapping[str, Any]) -> Tuple[str, ...]:
    found = list(_unknown_options(instance))
    if instance.get('collection') == DEPRECATED_COLLECTION:
        found.append('`collection: listing` is deprecated and read as `auto`: the kernel\'s nf_tables ruleset is read over netlink')
    if instance.get('table_listing_interval') is not None:
        found.append('`table_listing_interval` is deprecated and ignored: nothing is listed table by table any more')
    return tuple(found)


def parse_options(instance: Optional[Mapping[str, Any]], default_proc_path: Optional[str] = None) -> Options:
    """Validate an instance (a conf.yaml ``instances`` entry). Raises :class:`InvalidConfiguration`.

    ``default_proc_path``: the ``proc_path`` when the instance sets none (in the Agent, its own
    ``procfs_path`` setting, which containerised Agents set to the host's /proc); /proc without it."""
    if instance is None:
        instance = {}
    if not isinstance(instance, Mapping):
        raise InvalidConfiguration('an instance must be a mapping of options, not {!r}'.format(instance))
    deprecations = _deprecations(instance)
    max_output = _positive_number(instance, 'max_output_bytes', DEFAULT_MAX_OUTPUT_BYTES)
    return Options(
        rules=_rules_of_families(instance),
        families=_families(instance),
        save_commands=_save_commands(instance),
        use_sudo=_boolean(instance, 'use_sudo', False),
        timeout=_positive_number(instance, 'timeout', DEFAULT_TIMEOUT),
        max_output_bytes=int(max_output),
        ruleset_files=_ruleset_files(instance),
        applicability=_choice(instance, 'applicability', APPLICABILITY, 'auto'),
        mode=_choice(instance, 'mode', MODES, 'effective'),
        partial=_choice(instance, 'partial', PARTIAL, 'warning'),
        collection=_collection(instance),
        proc_path=_path(instance, 'proc_path', (default_proc_path or '').rstrip('/') or DEFAULT_PROC_PATH),
        network_namespace=_optional_path(instance, 'network_namespace'),
        host_root=_path(instance, 'host_root', '/'),
        dpkg_status_file=_path(instance, 'dpkg_status_file', '/var/lib/dpkg/status'),
        rpm_command=_command(instance, 'rpm_command', ('rpm',)),
        rpm_database_path=_path(instance, 'rpm_database_path', '/var/lib/rpm'),
        tags=_tags(instance),
        waivers=_waivers(instance),
        deprecations=deprecations,
    )
