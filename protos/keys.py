"""Every record and key name on the wire, in one place.

Server and client, fedrank's own apps and a site's foreign one, agree on these names;
a reply with a record not named here for its kind is rejected (:mod:`fedrank.protos.gate`).
"""

# Records of a message (RecordDict keys).
ARRAYS = "arrays"
"""ArrayRecord: dense weights or adapter tensors (both directions)."""
UPDATE = "update"
"""ConfigRecord: a bit-packed ``fedrank.v1.Update`` ranking payload under :data:`RANKING`."""
RANKING = "ranking"
METRICS = "metrics"
"""MetricRecord of a reply: :data:`NUM_EXAMPLES` and the keys in :data:`REPLY_METRICS`."""
CONFIG = "config"
"""ConfigRecord of a server message: :data:`SERVER_ROUND`, :data:`SETTINGS_DIGEST`."""
RUN = "run"
"""ConfigRecord: the run's client settings (discovery; re-sent to a node that lost them)."""
PRIVACY = "privacy"
"""ConfigRecord of a DP-SGD reply: a ``fedrank.v1.PrivacyReport`` under :data:`REPORT`."""
REPORT = "report"
PRIVACY_HISTORY = "privacy-history"
"""ArrayRecord of a train message: the client's accountant history as the ledger holds it."""
HISTORY = "history"

# Keys inside records.
SERVER_ROUND = "server-round"
SETTINGS_DIGEST = "settings-digest"
PARTITION_ID = "partition-id"
ASK = "ask"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
STEPS = "steps"
DP_EPSILON = "dp-epsilon"

REPLY_METRICS: frozenset[str] = frozenset({NUM_EXAMPLES, TRAIN_LOSS, STEPS, DP_EPSILON})
"""The metric keys a train reply may carry (:data:`NUM_EXAMPLES` is required)."""
