"""The command-line tools: one module per command, what they share in :mod:`.parsing`.

Every command imports this package before torch, so the OpenMP setting below is in place when
torch's OpenMP runtime starts (it reads its environment once, at load time). By default OpenMP
threads spin while they wait for the next parallel region; on a machine shared with other jobs
a spinning thread keeps a core from the thread it waits for. Measured on 2 shared cores (load
average 8-9, docs/speed.md): the fused engine on the demo model took 41 s with
``OMP_WAIT_POLICY=PASSIVE`` and had not finished after 290 s with the default. A value the user
sets wins (``setdefault``).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
