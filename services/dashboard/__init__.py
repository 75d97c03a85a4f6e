"""The dashboard: a read-only web view of experiments, live, whose buttons publish the CLI's
command messages. See :mod:`services.dashboard.service`."""
