"""``edgefleet demo``: the whole story on one machine (docs/demo.md).

Parts::

    cli.py          the click command: options, signals, output
    scenario.py     DemoRun: the story (rollouts, drift, final state), run() calls every step
    setup_steps.py  the fleet setup steps: keys, hub, enrollment, agents, training, packs
    harness.py      DemoOptions and what the steps stand on: real ``edgefleet`` commands as
                    child processes, waits with deadlines, close()
    processes.py    ProcessSupervisor: every child in its own session, all stopped at the end
    workspace.py    the work directory's layout, hub.toml, the demo's agent.toml tuning
    training.py     three versions of a classifier on scikit-learn's breast-cancer data
    traffic.py      the clients: OIP v2 JSON requests to each agent, drift injection
    fleet_view.py   reading devices and rollouts back from the hub store
    summary.py      the final summary (JSON or tables) and the story's checks
    narration.py    the narrated console output

Invariant: the demo imports neither the packager nor the agent; it runs their commands.
"""
