"""How many turns of a process may be in their busy steps at once.

A turn is mostly waiting (for its model), between two short busy steps: before the call, the
context read and the prompt; after it, the save of the call's records. A thousand turns whose
answers come back together each have a few milliseconds of that work, and asyncio runs ready
steps first come, first served: all at once, they fill the event loop's queue, and every other
request of the process (another tenant's read) waits behind all of them, seconds at a time.
Letting a few dozen turns into those steps at a time keeps the queue short. The others wait on
a semaphore, which costs nothing, and the burst ends no later, since the CPU was the limit
anyway (measured: README, Performance, in-flight turns).

One semaphore serves every agent of a process: the runtime's, which belongs to one event loop
(`runtime/pool.py` keeps a runtime per loop). `async with` it around a busy step only: never
around a wait on a model, a lock or a person, and never nested (a turn holds one entry at most).
"""

ADMITTED = 32  # turns in a busy step at once, per process (per event loop)
