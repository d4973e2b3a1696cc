"""Fleet runs and incident runbooks.

- models.py: the runbook format (typed parameters, steps, confirm points, serial waves);
- runbook.py: reading a runbook, checking parameters, binding it to one host;
- steps/: one executor per step action, acting on the local host;
- execute.py: a bound runbook's steps on the local host, with on_failure and rollback;
- ssh.py: paramiko connections (keys, ssh-agent, known_hosts checking, sudo, timeouts);
- remote.py: ``opsagent fleet-exec``, what the controller runs on each host over SSH;
- orchestrate.py: waves, forks, per-host timeouts, max_fail_percentage, the recap;
- incidents.py, postmortem.py: incident records and the post-incident report.
"""
