"""What installing and running the check promises, held to the files that make the promises.

setup.py (Python and datadog-checks-base floors, a light dependency list covering every import), the
import under ``python -W error``, the README's set-up commands as `.ci/run` runs them, its Setup section as
the tile shows it, LICENSE and the manifest's author block.
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'loopback_traffic')


def read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts), encoding='utf-8') as f:
        return f.read()


def setup_keywords() -> dict:
    """The literal keyword arguments of the ``setup()`` call in setup.py, without running it."""
    for node in ast.walk(ast.parse(read('setup.py'))):
        if isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'setup':
            keywords = {}
            for keyword in node.keywords:
                try:
                    keywords[keyword.arg] = ast.literal_eval(keyword.value)
                except ValueError:
                    pass
            return keywords
    raise AssertionError('no setup() call in setup.py')


def requirement_name(requirement: str) -> str:
    return re.split(r'[\[<>=!~;\s]', requirement, maxsplit=1)[0].lower().replace('_', '-')


def base_floor() -> str:
    (floor,) = [
        r.split('>=', 1)[1] for r in setup_keywords()['install_requires'] if requirement_name(r) == 'datadog-checks-base'
    ]
    return floor


def version_tuple(version: str) -> tuple:
    return tuple(int(part) for part in re.findall(r'\d+', version)[:3])


def run_python(*args: str, cwd: str = '/') -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONWARNINGS'}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def readme_section(heading: str) -> str:
    """The text under ``heading`` (e.g. '## Setup') up to the next heading of the same or a higher level."""
    text = read('README.md')
    level = heading.split(' ', 1)[0]
    start = text.index('\n' + heading + '\n')
    following = re.compile(r'^#{1,%d} ' % len(level), re.M)
    end = following.search(text, start + len(heading) + 2)
    return text[start : end.start() if end else len(text)]


# ---------------------------------------------------------------------------------------------------------------
# The import under -W error (Pydantic's deprecation of the generated models' after-validator)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    'module, cwd',
    [('datadog_checks.loopback_traffic', '/'), ('loopback_traffic', ROOT)],
    ids=['installed-name', 'from-the-repo-root'],
)
def test_the_package_imports_with_warnings_as_errors(module, cwd):
    done = run_python('-W', 'error', '-c', f'import {module}', cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ''


def test_the_cli_runs_with_warnings_as_errors():
    done = run_python('-W', 'error', '-m', 'datadog_checks.loopback_traffic', '--example', 'misordered', '--json')
    assert done.returncode == 2, done.stderr  # CRITICAL, see the README
    assert json.loads(done.stdout)
    assert 'Warning' not in done.stderr


def test_only_the_generated_models_warning_is_ignored():
    """The filter in config_models/validators.py covers those two modules, not the same warning elsewhere."""
    pydantic = pytest.importorskip('pydantic')
    if not hasattr(pydantic, 'PydanticDeprecatedSince212'):
        pytest.skip(f'pydantic {pydantic.VERSION} does not deprecate classmethod after-validators')
    code = textwrap.dedent(
        """
        import warnings
        import datadog_checks.loopback_traffic
        from pydantic import BaseModel, model_validator
        warnings.warn('still an error', DeprecationWarning)
        """
    )
    done = run_python('-W', 'error', '-c', code)
    assert done.returncode == 1 and 'DeprecationWarning: still an error' in done.stderr, done.stderr
    code = textwrap.dedent(
        """
        import datadog_checks.loopback_traffic
        from pydantic import BaseModel, model_validator

        class Elsewhere(BaseModel):
            @model_validator(mode='after')
            def _final(cls, model):
                return model
        """
    )
    done = run_python('-W', 'error', '-c', code)
    assert done.returncode == 1 and 'PydanticDeprecatedSince212' in done.stderr, done.stderr


def test_the_generated_models_are_left_as_ddev_writes_them():
    # `ddev validate models` compares them with its template, which declares the validator this way.
    for name in ('instance.py', 'shared.py'):
        text = read('loopback_traffic', 'config_models', name)
        assert text.startswith('# This file is autogenerated.'), name
        assert "    @model_validator(mode='after')\n    def _final_validation(cls, model):\n" in text, name


# ---------------------------------------------------------------------------------------------------------------
# setup.py: the Python floor, the datadog-checks-base floor, a light dependency list
# ---------------------------------------------------------------------------------------------------------------
def test_python_floor_is_the_one_the_code_needs_and_the_readme_states():
    assert setup_keywords()['python_requires'] == '>=3.10'
    # @dataclass(slots=True) is 3.10 syntax: the floor cannot be lower.
    assert any('slots=True' in read('loopback_traffic', name) for name in os.listdir(PACKAGE) if name.endswith('.py'))
    assert 'Python 3.10 or later' in read('README.md').split('```', 1)[0]
    assert 'Python 3.10 or later' in readme_section('### Installation')


def test_the_installed_datadog_checks_base_has_what_the_models_call():
    installed = importlib.metadata.version('datadog-checks-base')
    assert version_tuple(installed) >= version_tuple(base_floor())
    from datadog_checks.base.utils.models import validation

    assert callable(validation.security.check_field_trusted_provider)  # 37.33.0 and later


def test_the_readme_states_the_agent_that_ships_the_base_floor():
    installation = readme_section('### Installation')
    assert 'Agent 7.78.0 or later' in installation
    assert f'datadog-checks-base {base_floor()} or later' in installation
    assert '7.78.0' in read('setup.py') and base_floor() == '37.33.0'


def third_party_imports() -> dict:
    """Top-level names the package imports that are neither its own nor the standard library's: name -> file."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding='utf-8') as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in (n.split('.', 1)[0] for n in names):
                    if top not in sys.stdlib_module_names and top not in ('__future__', 'loopback_traffic'):
                        found.setdefault(top, os.path.relpath(path, ROOT))
    return found


def distributions_providing(top: str) -> set:
    """Installed distributions with a top-level package ``top`` (by top_level.txt or by their files: what
    importlib.metadata.packages_distributions() does from 3.11 on; 3.10's reads top_level.txt only)."""
    found = set()
    for dist in importlib.metadata.distributions():
        declared = (dist.read_text('top_level.txt') or '').split()
        if top in declared or any(f.parts and f.parts[0] in (top, top + '.py') for f in dist.files or ()):
            found.add(requirement_name(dist.metadata['Name']))
    return found


def test_every_third_party_import_is_declared_and_nothing_more():
    requirements = setup_keywords()['install_requires']
    assert not any('[' in r for r in requirements), 'no extras: datadog-checks-base[deps] pulls ~40 packages'
    declared = {requirement_name(r) for r in requirements}
    needed = set()
    for top, where in sorted(third_party_imports().items()):
        candidates = distributions_providing(top)
        assert candidates & declared, f'{where} imports {top} ({sorted(candidates)}): not in install_requires'
        needed |= candidates & declared
    # lazy-loader: not imported by the check, but by datadog_checks.base before anything else.
    assert declared - needed == {'lazy-loader'}


# ---------------------------------------------------------------------------------------------------------------
# The README's set-up, as .ci/run runs it
# ---------------------------------------------------------------------------------------------------------------
SETUP_COMMAND = 'scripts/setup-venv && .venv/bin/loopback-traffic'
TEST_COMMAND = '.venv/bin/python -m pytest tests'


def test_readme_setup_commands():
    block = read('README.md').split('```sh\n', 1)[1].split('```', 1)[0]
    commands = [line.split('#', 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == [SETUP_COMMAND, TEST_COMMAND]
    assert os.access(os.path.join(ROOT, 'scripts', 'setup-venv'), os.X_OK)


def test_ci_runs_the_readme_commands():
    lines = [line.strip() for line in read('.ci', 'run').splitlines()]
    setup, cli = SETUP_COMMAND.split(' && ')
    # Command 1 in two lines: a failed set-up fails CI, the CLI's verdict on the CI machine does not.
    assert setup in lines
    (cli_line,) = [line for line in lines if line.startswith(cli)]
    assert lines.index(cli_line) == lines.index(setup) + 1 and cli_line.startswith(cli + ' || ')
    # Command 2 after it, with namespace tests that fail rather than skip.
    tests = lines.index(TEST_COMMAND)
    assert tests > lines.index(cli_line)
    assert 'export LOOPBACK_TRAFFIC_REQUIRE_NETNS=1' in lines[lines.index(cli_line) : tests]


def test_readme_setup_section_holds_what_the_tile_shows():
    # The tile shows README.md#Setup up to the next H2: installation, configuration and validation with it.
    manifest = json.loads(read('manifest.json'))
    assert manifest['tile']['configuration'] == 'README.md#Setup'
    setup = readme_section('## Setup')
    for heading in ('### Installation', '### Permissions', '### Configuration', '### Validation'):
        assert '\n' + heading + '\n' in setup, heading
    assert not re.search(r'^## (Installation|Configuration|Validation)$', read('README.md'), re.M)


def test_readme_embedded_pip_install():
    installation = readme_section('### Installation')
    (pip,) = [line for line in installation.splitlines() if '/opt/datadog-agent/embedded/bin/pip install' in line]
    assert ' --no-deps ' in pip
    assert 'cp conf.yaml.example /etc/datadog-agent/conf.d/loopback_traffic.d/' in installation


def test_readme_names_only_options_the_cli_has():
    from datadog_checks.loopback_traffic.cli import build_parser

    options = {o for action in build_parser()._actions for o in action.option_strings}
    validation = readme_section('### Validation')
    named = set(re.findall(r'`(--[a-z0-9-]+)', validation))
    assert named and named <= options, sorted(named - options)
    # Elsewhere --diagnose belongs to the benchmark, which has it.
    text = read('README.md')
    for match in re.finditer(r'--diagnose\b', text):
        assert text[max(0, match.start() - 20) : match.start()].endswith('benchmarks/run.py ')
    assert "'--diagnose'" in read('benchmarks', 'run.py')


# ---------------------------------------------------------------------------------------------------------------
# LICENSE and the manifest's author
# ---------------------------------------------------------------------------------------------------------------
def test_license_is_the_declared_one():
    assert setup_keywords()['license'] == 'BSD-3-Clause'
    text = read('LICENSE')
    assert text.startswith('BSD 3-Clause License\n')
    assert re.search(r'^Copyright \(c\) 2026, the Loopback Traffic authors$', text, re.M)
    assert 'Neither the name of the copyright holder nor the names of its' in text


def test_manifest_author_block():
    author = json.loads(read('manifest.json'))['author']
    assert set(author) == {'name', 'homepage', 'sales_email', 'support_email'}
    assert author['name'].strip()
    assert re.fullmatch(r'https://\S+', author['homepage'])
    for key in ('sales_email', 'support_email'):
        assert re.fullmatch(r'[^@\s]+@[^@\s]+\.[a-z]+', author[key]), key
