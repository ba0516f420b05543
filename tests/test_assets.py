"""Integration assets and config spec stay consistent with each other and with what the check emits.

No ddev needed: these tests read the real files (spec.yaml, the generated config models and example,
metadata.csv, service_checks.json, manifest.json, the dashboard and the monitors) and compare them with the
contract below, which mirrors section 5 of the behaviour spec. `scripts/ddev-validate` runs Datadog's own
validators on the same files.
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import zipfile

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = 'loopback_traffic'

# ---------------------------------------------------------------------------------------------------------------
# The contract: what the check emits (namespace `loopback_traffic`).
# ---------------------------------------------------------------------------------------------------------------
SERVICE_CHECK = 'loopback_traffic.compliance'
EMITTED_METRICS = {
    'loopback_traffic.compliant',
    'loopback_traffic.applicable',
    'loopback_traffic.requirement.status',
    'loopback_traffic.ruleset.rules',
    'loopback_traffic.collection.duration',
    'loopback_traffic.evaluated',
    'loopback_traffic.waived',
}
# The metrics tagged by requirement.
REQUIREMENT_METRICS = {'loopback_traffic.requirement.status', 'loopback_traffic.waived'}
RULES = {'set_loopback_traffic', 'set_ipv6_loopback_traffic', 'set_ufw_loopback_traffic', 'set_nftables_loopback_traffic'}
RULE_IDS = {'def-000-byk', 'def-000-mkc', 'def-000-sbg', 'def-000-x1o'}
FAMILIES = {'ipv4', 'ipv6'}
REQUIREMENTS = {'input_accept_lo', 'output_accept_lo', 'input_drop_loopback_source'}
# Tags the check puts on every submission, with their possible values.
CHECK_TAGS = {'rule': RULES, 'family': FAMILIES, 'rule_id': RULE_IDS}
# Only REQUIREMENT_METRICS carry `requirement:`.
REQUIREMENT_TAG = {'requirement': REQUIREMENTS}
# Tag keys that come from the Agent / unified service tagging rather than the check (dashboard template variables).
HOST_TAG_KEYS = {'host', 'env', 'service'}
TEMPLATE_VARIABLES = {'host', 'rule', 'env', 'service'}

# Instance options of this check (spec.yaml), and those the `instances/default` template brings.
CHECK_OPTIONS = {
    'iptables_save_command',
    'ip6tables_save_command',
    'iptables_legacy_save_command',
    'ip6tables_legacy_save_command',
    'use_sudo',
    'timeout',
    'rules',
    'families',
    'ruleset_files',
    'applicability',
    'mode',
    'partial',
    'collection',
    'table_listing_interval',
    'proc_path',
    'host_root',
    'dpkg_status_file',
    'rpm_command',
    'rpm_database_path',
    'max_output_bytes',
    'network_namespace',
    'waivers',
}
STANDARD_OPTIONS = {
    'tags',
    'service',
    'min_collection_interval',
    'empty_default_hostname',
    'metric_patterns',
    'disable_generic_tags',  # hidden: not in conf.yaml.example
    'enable_legacy_tags_normalization',  # hidden: not in conf.yaml.example
}
HIDDEN_STANDARD_OPTIONS = {'disable_generic_tags', 'enable_legacy_tags_normalization'}
EXPECTED_DEFAULTS = {
    'iptables_save_command': ('iptables-save',),
    'ip6tables_save_command': ('ip6tables-save',),
    'iptables_legacy_save_command': ('iptables-legacy-save',),
    'ip6tables_legacy_save_command': ('ip6tables-legacy-save',),
    'use_sudo': False,
    'timeout': 10,
    'families': ('ipv4', 'ipv6'),
    'ruleset_files': None,
    'applicability': 'auto',
    'mode': 'effective',
    'partial': 'warning',
    'collection': 'auto',
    'proc_path': '/proc',
    'dpkg_status_file': '/var/lib/dpkg/status',
    'rpm_command': ('rpm',),
    'rpm_database_path': '/var/lib/rpm',
    'max_output_bytes': 104857600,
    'min_collection_interval': 15,
    'network_namespace': None,
    'waivers': None,
}
ENUMS = {
    'applicability': {'auto', 'always'},
    'mode': {'effective', 'literal'},
    'partial': {'warning', 'critical', 'ok'},
    'collection': {'auto', 'save', 'listing'},
}
# Options naming a program or a file: refused from untrusted config providers when the Agent enforces it.
TRUSTED_PROVIDER_OPTIONS = {
    'iptables_save_command',
    'ip6tables_save_command',
    'iptables_legacy_save_command',
    'ip6tables_legacy_save_command',
    'rpm_command',
    'network_namespace',
    'host_root',
}

METADATA_HEADER = [
    'metric_name',
    'metric_type',
    'interval',
    'unit_name',
    'per_unit_name',
    'description',
    'orientation',
    'integration',
    'short_name',
    'curated_metric',
    'sample_tags',
]


def path(*parts):
    return os.path.join(ROOT, *parts)


def read_json(*parts):
    with open(path(*parts), encoding='utf-8') as f:
        return json.load(f)


def read_yaml(*parts):
    with open(path(*parts), encoding='utf-8') as f:
        return yaml.safe_load(f)


@pytest.fixture(scope='module')
def manifest():
    return read_json('manifest.json')


# ---------------------------------------------------------------------------------------------------------------
# Config spec, generated models and example: no drift
# ---------------------------------------------------------------------------------------------------------------
def spec_instance_section():
    spec = read_yaml('assets', 'configuration', 'spec.yaml')
    (config_file,) = spec['files']
    assert config_file['name'] == f'{CHECK}.yaml'
    sections = {s['template']: s for s in config_file['options']}
    return sections['instances']


def spec_options():
    """Options this spec declares itself (templates excluded), by name."""
    return {o['name']: o for o in spec_instance_section()['options'] if 'name' in o}


def example_params(section):
    """`@param` names documented in conf.yaml.example under `init_config:` or `instances:`."""
    with open(path('conf.yaml.example'), encoding='utf-8') as f:
        text = f.read()
    init_part, instances_part = re.split(r'^instances:\s*$', text, maxsplit=1, flags=re.M)
    part = instances_part if section == 'instances' else init_part
    return re.findall(r'^\s*## @param (\w+) - ', part, flags=re.M)


def instance_model_fields():
    from datadog_checks.loopback_traffic.config_models.instance import InstanceConfig

    return set(InstanceConfig.model_fields)


def test_spec_declares_the_check_options():
    assert set(spec_options()) == CHECK_OPTIONS
    templates = [o.get('template') for o in spec_instance_section()['options']]
    assert 'instances/default' in templates


def test_the_check_knows_exactly_the_spec_options():
    # config.py refuses a misspelt key naming the closest valid one: its list must be the spec's.
    from datadog_checks.loopback_traffic.config import CHECK_OPTIONS as KNOWN, STANDARD_OPTIONS as STANDARD

    assert set(KNOWN) == set(spec_options())
    assert set(STANDARD) == STANDARD_OPTIONS


def test_waivers_example_is_valid_for_the_check_and_the_model():
    from datadog_checks.loopback_traffic.config import parse_options

    (example,) = spec_options()['waivers']['value']['example']
    (waiver,) = parse_options({'waivers': [example]}).waivers
    assert waiver.chain == 'KUBE-EXTERNAL-SERVICES' and waiver.requirement == 'input_accept_lo'
    config, error = run_with_models({'waivers': [example], 'network_namespace': '/host/proc/1/ns/net'})
    assert not error, error
    assert config.network_namespace == '/host/proc/1/ns/net'


def test_model_fields_match_spec():
    fields = instance_model_fields()
    assert STANDARD_OPTIONS <= fields, 'instances/default template options missing: run scripts/ddev-validate --sync'
    assert fields - STANDARD_OPTIONS == set(spec_options()), 'config_models out of date: scripts/ddev-validate --sync'


def test_example_params_match_spec():
    params = example_params('instances')
    assert len(params) == len(set(params)), 'an option is documented twice'
    assert set(params) - STANDARD_OPTIONS == set(spec_options()), 'conf.yaml.example out of date: --sync'
    assert set(params) & STANDARD_OPTIONS == STANDARD_OPTIONS - HIDDEN_STANDARD_OPTIONS
    assert example_params('init_config') == ['service']


def test_example_options_follow_spec_order():
    own = [p for p in example_params('instances') if p in CHECK_OPTIONS]
    assert own == [o['name'] for o in spec_instance_section()['options'] if o.get('name') in CHECK_OPTIONS]


def test_every_option_is_documented():
    for name, option in spec_options().items():
        description = option.get('description', '').strip()
        assert len(description) > 40, name
        assert 'example' in option['value'], name


def test_example_config_is_a_usable_instance():
    # Copying the example as conf.yaml must give an instance mapping, not `instances: [null]`
    # (the base class then fails on `None.get`).
    config = read_yaml('conf.yaml.example')
    assert set(config) == {'init_config', 'instances'}
    assert isinstance(config['instances'], list) and len(config['instances']) == 1
    assert isinstance(config['instances'][0], dict)
    assert set(config['instances'][0]) <= CHECK_OPTIONS | STANDARD_OPTIONS


def test_spec_documents_enums_and_trusted_providers():
    options = spec_options()
    for name, allowed in ENUMS.items():
        assert set(options[name]['value']['enum']) == allowed, name
        assert options[name]['value']['example'] in allowed
    assert set(options['families']['value']['items']['enum']) == FAMILIES
    trusted = {name for name, o in options.items() if o['value'].get('require_trusted_provider')}
    assert TRUSTED_PROVIDER_OPTIONS <= trusted
    for name in trusted:
        assert name in TRUSTED_PROVIDER_OPTIONS or name.endswith(('_path', '_file', '_files')), name

    from datadog_checks.loopback_traffic.config_models.instance import SECURE_FIELD_NAMES

    assert set(SECURE_FIELD_NAMES) == trusted


def run_with_models(instance):
    """Run a throw-away AgentCheck that loads this package's config models; return (config, error)."""
    from datadog_checks.base import AgentCheck
    from datadog_checks.loopback_traffic.config_models import ConfigMixin

    seen = {}

    class Probe(AgentCheck, ConfigMixin):
        def load_configuration_models(self, package_path=None):
            super().load_configuration_models('datadog_checks.loopback_traffic.config_models')

        def check(self, _):
            seen['config'] = self.config

    probe = Probe(CHECK, {}, [instance])
    probe.check_id = f'{CHECK}:probe'
    error = probe.run()
    return seen.get('config'), error


def test_model_defaults_are_the_documented_ones():
    config, error = run_with_models(read_yaml('conf.yaml.example')['instances'][0])
    assert not error, error
    for name, expected in EXPECTED_DEFAULTS.items():
        assert getattr(config, name) == expected, name


def test_model_accepts_a_container_setup():
    instance = {
        'iptables_save_command': ['nsenter', '--net=/host/proc/1/ns/net', 'iptables-save'],
        'ruleset_files': {'ipv6': '/etc/iptables/rules.v6'},
        'families': ['ipv6'],
        'applicability': 'always',
        'mode': 'literal',
        'partial': 'critical',
        'proc_path': '/host/proc',
        'use_sudo': True,
        'timeout': 2.5,
        'tags': ['team:net'],
    }
    config, error = run_with_models(instance)
    assert not error, error
    assert config.iptables_save_command == ('nsenter', '--net=/host/proc/1/ns/net', 'iptables-save')
    assert config.ruleset_files.ipv6 == '/etc/iptables/rules.v6' and config.ruleset_files.ipv4 is None
    assert config.families == ('ipv6',) and config.timeout == 2.5 and config.tags == ('team:net',)


@pytest.mark.parametrize('option, value', [('mode', 'strict'), ('partial', 'fail'), ('families', ['ipv5'])])
def test_model_rejects_values_outside_the_enum(option, value):
    config, error = run_with_models({option: value})
    assert config is None
    assert option in error


# ---------------------------------------------------------------------------------------------------------------
# The wheel carries the root conf.yaml.example
# ---------------------------------------------------------------------------------------------------------------
def test_data_example_is_a_link_to_the_root_file():
    link = path(CHECK, 'data', 'conf.yaml.example')
    assert os.path.islink(link)
    assert os.readlink(link) == '../../conf.yaml.example'
    assert os.path.samefile(link, path('conf.yaml.example'))


def test_wheel_ships_the_root_example(tmp_path):
    # Build from a copy so the working tree gets no build/ or egg-info, keeping the symlink as a symlink.
    src = tmp_path / 'src'
    src.mkdir()
    for name in ('setup.py', 'README.md', 'conf.yaml.example'):
        shutil.copy2(path(name), src / name)
    shutil.copytree(
        path(CHECK), src / CHECK, symlinks=True, ignore=shutil.ignore_patterns('__pycache__', '*.pyc')
    )
    out = tmp_path / 'dist'
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q', '-w', str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob('*.whl')
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        member = f'datadog_checks/{CHECK}/data/conf.yaml.example'
        assert member in names
        with open(path('conf.yaml.example'), 'rb') as f:
            assert whl.read(member) == f.read()
        models = {n.rsplit('/', 1)[1] for n in names if n.startswith(f'datadog_checks/{CHECK}/config_models/')}
        assert models == {'__init__.py', 'defaults.py', 'instance.py', 'shared.py', 'validators.py'}
        assert not any(n.startswith(f'{CHECK}/') for n in names)
        assert 'datadog_checks/__init__.py' not in names


# ---------------------------------------------------------------------------------------------------------------
# metadata.csv, service_checks.json, manifest.json
# ---------------------------------------------------------------------------------------------------------------
def metadata_rows():
    with open(path('metadata.csv'), newline='', encoding='utf-8') as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [dict(zip(header, row)) for row in reader]


def test_metadata_header_is_exact():
    header, _ = metadata_rows()
    assert header == METADATA_HEADER


def test_metadata_lists_exactly_the_emitted_metrics():
    _, rows = metadata_rows()
    names = [r['metric_name'] for r in rows]
    assert set(names) == EMITTED_METRICS
    assert len(names) == len(EMITTED_METRICS)
    assert names == sorted(names)


def test_metadata_rows_are_valid():
    _, rows = metadata_rows()
    for row in rows:
        name = row['metric_name']
        assert len(row) == len(METADATA_HEADER), name
        assert row['metric_type'] == 'gauge', name
        assert row['integration'] == CHECK, name
        assert row['orientation'] in {'-1', '0', '1'}, name
        # Units from Datadog's catalogue; `rule` and `evaluation` are not in it.
        assert row['unit_name'] in {'', 'second', 'entry'}, name
        assert row['per_unit_name'] == '', name
        description = row['description']
        assert 20 < len(description) <= 400 and description.isascii() and '|' not in description, name
        assert row['short_name'], name
    units = {r['metric_name']: r['unit_name'] for r in rows}
    assert units['loopback_traffic.collection.duration'] == 'second'


def test_service_checks_file(manifest):
    service_checks = read_json('assets', 'service_checks.json')
    assert len(service_checks) == 1
    (entry,) = service_checks
    assert set(entry) == {'agent_version', 'integration', 'check', 'statuses', 'groups', 'name', 'description'}
    assert entry['check'] == SERVICE_CHECK
    assert entry['integration'] == manifest['assets']['integration']['source_type_name'] == 'Loopback Traffic'
    assert sorted(entry['statuses']) == ['critical', 'ok', 'unknown', 'warning']
    assert entry['groups'] == ['host', 'rule']
    assert re.fullmatch(r'\d+\.\d+\.\d+', entry['agent_version'])
    for status in ('OK', 'WARNING', 'CRITICAL', 'UNKNOWN'):
        assert f'`{status}`' in entry['description']


def test_manifest(manifest):
    assert manifest['manifest_version'] == '2.0.0'
    assert str(uuid.UUID(manifest['app_uuid'])) == manifest['app_uuid']
    assert manifest['app_id'] == 'loopback-traffic'
    tile = manifest['tile']
    assert tile['title'] == 'Loopback Traffic'
    assert tile['overview'] == 'README.md#Overview'
    assert tile['configuration'] == 'README.md#Setup'
    assert tile['support'] == 'README.md#Support'
    assert {'Supported OS::Linux', 'Category::Security', 'Category::OS & System'} <= set(tile['classifier_tags'])
    integration = manifest['assets']['integration']
    assert integration['source_type_name'] == 'Loopback Traffic'
    assert integration['configuration']['spec'] == 'assets/configuration/spec.yaml'
    assert integration['metrics'] == {
        'prefix': 'loopback_traffic.',
        'check': 'loopback_traffic.applicable',
        'metadata_path': 'metadata.csv',
    }
    assert integration['service_checks']['metadata_path'] == 'assets/service_checks.json'
    assert all(m.startswith(integration['metrics']['prefix']) for m in EMITTED_METRICS)


def test_manifest_assets_exist(manifest):
    assets = manifest['assets']
    referenced = list(assets['dashboards'].values()) + list(assets['monitors'].values())
    referenced += [assets['integration']['configuration']['spec'], assets['integration']['metrics']['metadata_path']]
    referenced += [assets['integration']['service_checks']['metadata_path']]
    for relative in referenced:
        assert os.path.isfile(path(relative)), relative
    assert set(assets['dashboards'].values()) == {'assets/dashboards/loopback_traffic_overview.json'}
    on_disk = {f'assets/monitors/{n}' for n in os.listdir(path('assets', 'monitors'))}
    assert set(assets['monitors'].values()) == on_disk
    for title, relative in assets['monitors'].items():
        assert read_json(relative)['title'] == title


# ---------------------------------------------------------------------------------------------------------------
# Dashboard and monitor queries use only what the check emits
# ---------------------------------------------------------------------------------------------------------------
METRIC_QUERY = re.compile(
    r'^(?:(?P<space>avg|sum|min|max):)?(?P<metric>[A-Za-z][\w.]*)\{(?P<filters>[^}]*)\}'
    r'(?:\s+by\s+\{(?P<by>[^}]*)\})?$'
)
FORMULA_FUNCTIONS = {'count_nonzero', 'count_not_null', 'cutoff_min', 'cutoff_max', 'abs', 'default_zero'}


def allowed_tags_for(metric):
    tags = dict(CHECK_TAGS)
    if metric in REQUIREMENT_METRICS:
        tags.update(REQUIREMENT_TAG)
    return tags


def tag_problems(filters, allowed, template_variables):
    """Problems with a list of tag filters: `$var`, `key:value`, `!key:value` or `*`."""
    problems = []
    for item in filters:
        item = item.strip()
        if item in ('*', ''):
            continue
        if item.startswith('$'):
            if item[1:] not in template_variables:
                problems.append(f'unknown template variable {item}')
            continue
        key, sep, value = item.lstrip('!').partition(':')
        if not sep:
            problems.append(f'tag filter without a key: {item}')
        elif key in HOST_TAG_KEYS:
            continue
        elif key not in allowed:
            problems.append(f'tag key {key!r} is not emitted')
        elif value != '*' and value not in allowed[key]:
            problems.append(f'{key}:{value} is not a value the check emits')
    return problems


def metric_query_problems(query, template_variables):
    match = METRIC_QUERY.match(query.strip())
    if not match:
        return [f'unparsable metric query {query!r}']
    metric = match['metric']
    if metric not in EMITTED_METRICS:
        return [f'metric {metric!r} is not emitted']
    allowed = allowed_tags_for(metric)
    problems = tag_problems(match['filters'].split(','), allowed, template_variables)
    for key in filter(None, (k.strip() for k in (match['by'] or '').split(','))):
        if key not in allowed and key not in HOST_TAG_KEYS:
            problems.append(f'group-by key {key!r} is not emitted')
    return problems


def formula_problems(formula, query_names):
    problems = []
    for name in re.findall(r'[A-Za-z_]\w*', formula):
        if name not in query_names and name not in FORMULA_FUNCTIONS:
            problems.append(f'formula {formula!r} uses unknown name {name!r}')
    return problems


def walk(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


EVENT_SOURCE = 'source:loopback_traffic'


def event_query_problems(query, template_variables):
    """An event search of this check's status changes: `source:loopback_traffic` and template variables."""
    words = query.split()
    problems = [] if EVENT_SOURCE in words else [f'event query {query!r} does not select {EVENT_SOURCE}']
    problems += tag_problems([w for w in words if w != EVENT_SOURCE], CHECK_TAGS, template_variables)
    return problems


def dashboard_problems(dashboard):
    template_variables = {v['name'] for v in dashboard.get('template_variables', [])}
    problems, metric_queries, checks, event_widgets = [], 0, 0, 0
    for node in walk(dashboard):
        if 'queries' in node:
            names = set()
            for query in node['queries']:
                if query.get('data_source') != 'metrics':
                    problems.append(f'unexpected data source {query.get("data_source")}')
                    continue
                names.add(query['name'])
                metric_queries += 1
                problems += metric_query_problems(query['query'], template_variables)
            for formula in node.get('formulas', []):
                problems += formula_problems(formula['formula'], names)
        if 'q' in node:
            problems.append(f'legacy request format {node["q"]!r}')
        if node.get('data_source') == 'event_stream':
            event_widgets += 1
            problems += event_query_problems(node['query_string'], template_variables)
        if node.get('type') == 'event_timeline':
            event_widgets += 1
            problems += event_query_problems(node['query'], template_variables)
        if node.get('type') == 'event_stream':
            problems.append('event_stream widgets exist on free layouts only: use list_stream')
        if node.get('type') == 'check_status':
            checks += 1
            if node['check'] != SERVICE_CHECK:
                problems.append(f'unknown service check {node["check"]!r}')
            problems += tag_problems(node.get('tags', []), CHECK_TAGS, template_variables)
            for key in node.get('group_by', []):
                if key not in CHECK_TAGS and key not in HOST_TAG_KEYS:
                    problems.append(f'group-by key {key!r} is not emitted')
    if not metric_queries or not checks or not event_widgets:
        problems.append('no metric query, no check status widget or no event widget found')
    return problems


SERVICE_CHECK_QUERY = re.compile(
    r'^"(?P<check>[\w.]+)"\.over\((?P<over>[^)]*)\)(?:\.by\((?P<by>[^)]*)\))?\.last\(\d+\)\.count_by_status\(\)$'
)


def monitor_query_problems(query):
    match = SERVICE_CHECK_QUERY.match(query)
    if not match:
        return [f'unparsable service check query {query!r}']
    problems = []
    if match['check'] != SERVICE_CHECK:
        problems.append(f'unknown service check {match["check"]!r}')
    over = [s.strip().strip('"') for s in match['over'].split(',')]
    problems += tag_problems(over, CHECK_TAGS, set())
    for key in (k.strip().strip('"') for k in (match['by'] or '').split(',') if k.strip()):
        if key not in CHECK_TAGS and key not in HOST_TAG_KEYS:
            problems.append(f'group-by key {key!r} is not emitted')
    return problems


def test_the_query_checker_finds_mistakes():
    tvars = TEMPLATE_VARIABLES
    assert metric_query_problems('max:loopback_traffic.compliant{$host,rule:set_loopback_traffic} by {host}', tvars) == []
    assert metric_query_problems('max:loopback_traffic.compliance{*}', tvars)  # service check, not a metric
    assert metric_query_problems('max:loopback_traffic.compliant{requirement:input_accept_lo}', tvars)
    assert metric_query_problems('max:loopback_traffic.compliant{*} by {chain}', tvars)
    assert metric_query_problems('max:loopback_traffic.applicable{rule:set_loopback}', tvars)
    assert metric_query_problems('max:loopback_traffic.applicable{$cluster}', tvars)
    assert formula_problems('count_nonzero(q1) - q2', {'q1'})
    assert monitor_query_problems('"loopback_traffic.compliance".over("*").by("host","rule").last(2).count_by_status()') == []
    assert monitor_query_problems('"loopback_traffic.compliance".over("*").by("host","table").last(2).count_by_status()')
    assert monitor_query_problems('"loopback_traffic.can_run".over("*").last(2).count_by_status()')
    assert event_query_problems('source:loopback_traffic $host $rule', tvars) == []
    assert event_query_problems('source:loopback_traffic rule:set_loopback', tvars)
    assert event_query_problems('$host', tvars)
    assert metric_monitor_problems('max(last_5m):max:loopback_traffic.evaluated{*} by {host,rule} < 1', 1) == []
    assert metric_monitor_problems('max(last_5m):max:loopback_traffic.evaluated{*} by {host,rule} < 1', 2)
    assert metric_monitor_problems('max(last_5m):max:loopback_traffic.evaluate{*} by {host,rule} < 1', 1)


def test_dashboard_queries_use_emitted_metrics_and_tags():
    dashboard = read_json('assets', 'dashboards', 'loopback_traffic_overview.json')
    assert dashboard_problems(dashboard) == []


def test_dashboard_format():
    dashboard = read_json('assets', 'dashboards', 'loopback_traffic_overview.json')
    assert {'title', 'description', 'widgets', 'template_variables', 'layout_type'} <= set(dashboard)
    assert {v['name']: v['prefix'] for v in dashboard['template_variables']} == {v: v for v in TEMPLATE_VARIABLES}
    ids = [node['id'] for node in walk(dashboard['widgets']) if 'definition' in node]
    assert len(ids) == len(set(ids))
    types = {node['type'] for node in walk(dashboard['widgets']) if 'type' in node and 'title' in node}
    assert {'query_value', 'query_table', 'check_status', 'timeseries', 'list_stream', 'event_timeline'} <= types
    text = json.dumps(dashboard)
    for rule in RULES:
        assert f'rule:{rule}' in text
    assert 'requirement' in text and 'loopback_traffic.collection.duration' in text
    for metric in EMITTED_METRICS:
        assert metric in text, metric


def test_dashboard_opens_with_an_about_group_and_shows_the_status_change_events():
    dashboard = read_json('assets', 'dashboards', 'loopback_traffic_overview.json')
    groups = [w['definition'] for w in dashboard['widgets']]
    assert all(g['type'] == 'group' for g in groups)
    about = groups[0]
    assert about['title'] == 'About'
    (note,) = [w['definition'] for w in about['widgets']]
    assert note['type'] == 'note'
    for word in ('input_accept_lo', 'output_accept_lo', 'input_drop_loopback_source', 'UNKNOWN', 'waivers', 'loopback-traffic', 'event'):
        assert word in note['content'], word
    (events,) = [g for g in groups if 'event' in g['title'].lower()]
    kinds = {w['definition']['type'] for w in events['widgets']}
    assert kinds == {'event_timeline', 'list_stream'}
    (stream,) = [w['definition'] for w in events['widgets'] if w['definition']['type'] == 'list_stream']
    (request,) = stream['requests']
    assert request['response_format'] == 'event_list' and request['query']['event_size'] == 'l'
    # The same source as the check's events.
    from datadog_checks.loopback_traffic.report import NAMESPACE

    assert request['query']['query_string'].split()[0] == 'source:' + NAMESPACE


def load_monitors():
    folder = path('assets', 'monitors')
    return {name: read_json('assets', 'monitors', name) for name in sorted(os.listdir(folder))}


METRIC_MONITOR_QUERY = re.compile(
    r'^(?P<reducer>avg|max|min|sum)\(last_(?P<window>\d+[mh])\):(?P<query>.+?)\s*(?P<op><=|>=|<|>)\s*(?P<threshold>-?[\d.]+)$'
)


def metric_monitor_problems(query, critical):
    match = METRIC_MONITOR_QUERY.match(query)
    if not match:
        return [f'unparsable metric monitor query {query!r}']
    problems = metric_query_problems(match['query'], set())
    if float(match['threshold']) != float(critical):
        problems.append(f'the query threshold {match["threshold"]} is not options.thresholds.critical {critical}')
    return problems


def test_monitors_use_emitted_metrics_service_check_and_tags():
    monitors = load_monitors()
    assert len(monitors) == 2
    for name, monitor in monitors.items():
        assert {'version', 'created_at', 'last_updated_at', 'title', 'description', 'tags', 'definition'} <= set(
            monitor
        ), name
        definition = monitor['definition']
        if definition['type'] == 'service check':
            assert monitor_query_problems(definition['query']) == [], name
            assert '.by("host","rule")' in definition['query'], name
        else:
            assert definition['type'] == 'query alert', name
            assert metric_monitor_problems(definition['query'], definition['options']['thresholds']['critical']) == [], name
            assert 'by {host,rule}' in definition['query'], name
        assert 'integration:loopback_traffic' in monitor['tags'], name
        for variable in re.findall(r'\{\{\s*([\w.]+)\.name\s*\}\}', definition['message'] + definition['name']):
            assert variable in {'host', 'rule'}, (name, variable)


def test_monitor_messages_tell_what_to_do():
    for name, monitor in load_monitors().items():
        definition = monitor['definition']
        message = definition['message']
        assert 'loopback-traffic' in message, name
        assert 'datadog-agent check loopback_traffic' in message, name
        assert 'source:loopback_traffic' in message, name  # where the status-change events are
        if definition['type'] == 'service check':
            assert '{{check_message}}' in message, name


def monitors_by_title():
    return {monitor['title']: monitor['definition'] for monitor in load_monitors().values()}


def test_the_non_compliant_monitor_pages_on_critical_and_warning_only():
    definition = monitors_by_title()['Loopback traffic rule not met']
    options = definition['options']
    assert definition['type'] == 'service check'
    assert set(options['thresholds']) == {'critical', 'warning', 'ok'}  # UNKNOWN: the other monitor
    assert options['notify_no_data'] is False  # a decommissioned host does not page


def test_the_cannot_evaluate_monitor_never_pages_on_a_compliance_status():
    # A service check monitor always alerts on CRITICAL: this one watches the `evaluated` gauge, which is
    # 0 exactly when the service check is UNKNOWN, and alerts only when it stays 0.
    definition = monitors_by_title()['Loopback traffic cannot be evaluated']
    options = definition['options']
    assert definition['type'] == 'query alert'
    assert 'loopback_traffic.compliance' not in definition['query']
    match = METRIC_MONITOR_QUERY.match(definition['query'])
    assert match['reducer'] == 'max' and match['op'] == '<' and match['query'].startswith('max:loopback_traffic.evaluated{')
    assert options['thresholds'] == {'critical': 1}
    assert options['notify_no_data'] is False  # a decommissioned host does not page


def test_readme_documents_what_the_check_sends_and_the_monitors():
    with open(path('README.md'), encoding='utf-8') as f:
        readme = f.read()
    for metric in EMITTED_METRICS:
        assert f'`{metric}`' in readme, metric
    for title in monitors_by_title():
        assert title in readme, title
    for word in ('stopped reporting', 'notify_no_data', 'decommissioned'):
        assert word in readme, word
    for word in ('waivers', 'KUBE-EXTERNAL-SERVICES', 'expires', 'justification', 'network_namespace', 'procfs_path'):
        assert word in readme, word
