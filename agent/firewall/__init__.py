"""IP blocking that the agent owns: ``table inet opsagent`` in nftables.

* agent.firewall.guard — ``parse_target`` (strict address/CIDR parsing) and ``Protected``
  (loopback, the host's addresses, the collector, management networks, the allowlist, SSH
  sessions' peers, gateways, DNS servers: never blocked);
* agent.firewall.nft — ``Nftables``: the table, its sets and chains, through ``nft -j``;
* agent.firewall.blocks — ``Blocker``: blocks recorded in state.db, enforced by the kernel
  with a timeout, restored after a restart.

Typical use (the agent service, a ``block_ip`` action)::

    blocker = Blocker(state_dir, Nftables(), Protected.for_host(allowlist=playbook.allowlist))
    blocker.restore()                       # at start: re-apply what is still due
    outcome = blocker.block("203.0.113.7", 3600, rule="ssh-bruteforce", reason="5 failures")
"""

from agent.firewall.blocks import Block, Blocker, BlockOutcome, Restored, Unblocked
from agent.firewall.guard import Protected, format_net, parse_target
from agent.firewall.nft import Element, Nftables

__all__ = ["Block", "BlockOutcome", "Blocker", "Element", "Nftables", "Protected", "Restored",
           "Unblocked", "format_net", "parse_target"]
