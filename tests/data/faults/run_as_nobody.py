"""Run the check through the Agent API as an unprivileged user (uid/gid given on the command line).

Started as root by tests/test_faults.py: everything is imported first (the Python installation may not
be readable by the unprivileged user), then the process drops its privileges for good and runs the
check once per ``run`` line read from stdin, printing one JSON line per run:
``{"service_checks": [[status, message, tags], ...], "warnings": [...], "infos": [...], "error": "...", "uid": N}``.
"""
import json
import logging
import os
import sys


def main():
    uid, gid = int(sys.argv[1]), int(sys.argv[2])
    instance = json.loads(sys.argv[3])

    # Import everything the check may need before the privileges go.
    import selectors  # noqa: F401
    import signal  # noqa: F401
    import subprocess  # noqa: F401
    import encodings.idna  # noqa: F401
    import encodings.latin_1  # noqa: F401

    from datadog_checks.base.stubs import aggregator
    from datadog_checks.loopback_traffic import LoopbackTrafficCheck

    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append((record.levelname, record.getMessage()))

    logging.getLogger().addHandler(Collect())
    logging.getLogger().setLevel(logging.INFO)

    # Warm up as root with a harmless instance, so that every module the Agent base loads lazily is loaded.
    warm = LoopbackTrafficCheck(
        'loopback_traffic', {}, [{'applicability': 'always', 'iptables_save_command': ['true'], 'ruleset_files': {'ipv6': os.devnull}}]
    )
    warm.check_id = 'loopback_traffic:warm-up'
    assert warm.run() == '', 'the warm-up run failed'
    import datadog_checks.base.utils.format._json  # noqa: F401  (used when a run reports an error)

    check = LoopbackTrafficCheck('loopback_traffic', {}, [instance])
    check.check_id = 'loopback_traffic:nobody'
    # A first run as root would hide the fault: run the check only once privileges are gone.
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    assert os.getuid() == uid and os.geteuid() == uid

    for line in sys.stdin:
        if line.strip() != 'run':
            break
        aggregator.reset()
        del records[:]
        error = check.run()
        checks = [[sc.status, sc.message, list(sc.tags)] for sc in aggregator.service_checks('loopback_traffic.compliance')]
        print(json.dumps({'service_checks': checks, 'warnings': [m for level, m in records if level == 'WARNING'], 'infos': [m for level, m in records if level == 'INFO'], 'error': error, 'uid': os.getuid()}), flush=True)


if __name__ == '__main__':
    main()
