"""Named, parameterized queries: what the CLI and the dashboard ask the store (pure: no HTTP).

Each query reads the per-minute rollups where one exists, so its cost does not grow with the event rate.
Parameters are bound by the engine (server-side binding with declared types), never pasted into SQL text.
Every query takes `since` and `until` (ISO 8601 times, UTC unless they carry an offset; default: the last
hour, or the query's own default window); an empty filter parameter (camera_id, model_name...) means "all"."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping


class BadParameter(ValueError):
    pass


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    sql: str
    # Extra parameters beyond since/until: name -> (ClickHouse type, default).
    parameters: dict[str, tuple[str, Any]] = field(default_factory=dict)
    # How far back `since` goes when it is not given.
    default_window: timedelta = timedelta(hours=1)


_WINDOW = "minute >= toStartOfMinute({since:DateTime64(3, 'UTC')}) AND minute < {until:DateTime64(3, 'UTC')}"
_EVENT_WINDOW = "event_time >= {since:DateTime64(3, 'UTC')} AND event_time < {until:DateTime64(3, 'UTC')}"
# An annotation task's revision by when it was published (its event time is the task's creation).
_PUBLISHED_WINDOW = _EVENT_WINDOW.replace("event_time", "published_time")
# A training run or a candidate's rollout by its newest report or step.
_LAST_WINDOW = _EVENT_WINDOW.replace("event_time", "last_time")
_SECONDS = "greatest(1, dateDiff('second', {since:DateTime64(3, 'UTC')}, {until:DateTime64(3, 'UTC')}))"
_CAMERA = "({camera_id:String} = '' OR camera_id = {camera_id:String})"
_MODEL = "({model_name:String} = '' OR model_name = {model_name:String})"
# What a drift row is about: a subject by its name, or every subject of a camera, a sensor or a model.
_DRIFT_SUBJECT = " AND ".join(f"({{{p}:String}} = '' OR {p} = {{{p}:String}})"
                              for p in ("subject", "camera_id", "sensor_id", "model_name"))
_DRIFT_PARAMETERS = {p: ("String", "") for p in ("subject", "camera_id", "sensor_id", "model_name")}
_DATASET = "({dataset:String} = '' OR dataset = {dataset:String})"

# Reports of one job or steps of one rollout may share a millisecond: the later state, or stage, goes last.
_TRAINING_STATE_RANK = "multiIf(state = 'started', 0, state = 'progress', 1, 2)"
_ROLLOUT_STAGE_RANK = "multiIf(stage = 'shadow', 0, stage = 'canary', 1, 2)"
# A run's newest report (by time, then elapsed seconds, then state), and the gate's figures from the newest report
# that has them (the outcome, or a later step such as the import). `ordering` and `evaluated` are computed under
# the aggregation, so that no aggregate reads a column its neighbour's alias shadows.
_TRAINING_REPORTS = f"""
    SELECT *, (event_time, elapsed_s, {_TRAINING_STATE_RANK}) AS ordering,
           candidate_map50 != 0 OR champion_map50 != 0 OR state IN ('eligible', 'refused') AS evaluated
    FROM training_runs"""
# argMax skips NULLs: an unknown ETA (NULL) is taken in a tuple, so that the newest report's unknown is not
# replaced by an older report's estimate.
_NEWEST_OF_RUN = ", ".join(
    [f"argMax({column}, ordering) AS {column}" for column in (
        "state", "step", "done", "total", "elapsed_s", "candidate_name", "candidate_version", "champion_name",
        "champion_version", "reasons")]
    + ["argMax(tuple(eta_s), ordering).1 AS eta_s"]
    + [f"if(countIf(evaluated) = 0, NULL, argMaxIf({column}, ordering, evaluated)) AS {column}"
       for column in ("candidate_map50", "champion_map50")])

NAMED_QUERIES: dict[str, NamedQuery] = {q.name: q for q in (
    NamedQuery(
        "fps_per_camera", "Results per second of each camera over the window (primary models only).",
        f"""SELECT camera_id, sum(frames) AS frames, round(frames / {_SECONDS}, 3) AS fps
            FROM inference_minute WHERE {_WINDOW} AND NOT shadow AND {_CAMERA}
            GROUP BY camera_id ORDER BY camera_id""",
        {"camera_id": ("String", "")}),
    NamedQuery(
        "throughput", "Inference results per second, per minute and camera (primary models only).",
        f"""SELECT minute, camera_id, sum(frames) AS frames, round(frames / 60, 3) AS fps,
                   sum(detections) AS detections
            FROM inference_minute WHERE {_WINDOW} AND NOT shadow AND {_CAMERA}
            GROUP BY minute, camera_id ORDER BY minute, camera_id""",
        {"camera_id": ("String", "")}),
    NamedQuery(
        "latency_quantiles", "Latency p50/p95/p99 in ms per model and stage ('total' is the sum of the stages).",
        f"""SELECT model_name, stage, sum(samples) AS samples,
                   arrayMap(q -> round(q, 3), quantilesMerge(0.5, 0.95, 0.99)(latency_ms)) AS q,
                   q[1] AS p50_ms, q[2] AS p95_ms, q[3] AS p99_ms
            FROM latency_minute WHERE {_WINDOW} AND {_MODEL} AND {_CAMERA}
            GROUP BY model_name, stage ORDER BY model_name, stage""",
        {"model_name": ("String", ""), "camera_id": ("String", "")}),
    NamedQuery(
        "latency_over_time", "Latency p50/p95/p99 in ms of one stage, per minute and model.",
        f"""SELECT minute, model_name, arrayMap(q -> round(q, 3), quantilesMerge(0.5, 0.95, 0.99)(latency_ms)) AS q,
                   q[1] AS p50_ms, q[2] AS p95_ms, q[3] AS p99_ms
            FROM latency_minute WHERE {_WINDOW} AND stage = {{stage:String}} AND {_MODEL} AND {_CAMERA}
            GROUP BY minute, model_name ORDER BY minute, model_name""",
        {"stage": ("String", "total"), "model_name": ("String", ""), "camera_id": ("String", "")}),
    NamedQuery(
        "detections_per_class", "Detections per class and minute, with their mean score (primary models only).",
        f"""SELECT minute, label, sum(detections) AS detections, round(sum(score_sum) / detections, 4) AS mean_score
            FROM detections_minute WHERE {_WINDOW} AND NOT shadow AND {_CAMERA} AND {_MODEL}
            GROUP BY minute, label ORDER BY minute, label""",
        {"camera_id": ("String", ""), "model_name": ("String", "")}),
    NamedQuery(
        "camera_health_timeline", "Every status report of the cameras: state, rates, drops, reconnects.",
        f"""SELECT event_time, camera_id, state, reason, fps_read, fps_produced, frames_dropped, frames_skipped,
                   reconnects
            FROM camera_health WHERE {_EVENT_WINDOW} AND {_CAMERA}
            ORDER BY camera_id, event_time LIMIT 1 BY event_id""",
        {"camera_id": ("String", "")}),
    NamedQuery(
        "cameras", "Each camera seen in the window: its last reported state and rate, results per second "
                   "over the window's last minute, its last result.",
        f"""SELECT camera_id, if(h.state = '', 'unknown', h.state) AS state, h.reason AS reason,
                   h.fps_produced AS fps_produced, i.fps AS fps, i.last_result AS last_result
            FROM (SELECT camera_id, argMax(state, event_time) AS state, argMax(reason, event_time) AS reason,
                         argMax(fps_produced, event_time) AS fps_produced
                  FROM camera_health WHERE {_EVENT_WINDOW} GROUP BY camera_id) AS h
            FULL OUTER JOIN
                 (SELECT camera_id, max(event_time) AS last_result,
                         round(countIf(event_time >= {{until:DateTime64(3, 'UTC')}} - INTERVAL 1 MINUTE) / 60, 3) AS fps
                  FROM inference_events WHERE {_EVENT_WINDOW} AND NOT shadow GROUP BY camera_id) AS i
            USING camera_id ORDER BY camera_id""",
        {}),
    NamedQuery(
        "drift_scores", "Drift scores over time: per window, subject (camera, camera and model, sensor), feature "
                        "and statistic, the score, its threshold and whether it drifted; drifted_only=1 keeps the "
                        "drifted ones.",
        f"""SELECT event_time, subject, camera_id, sensor_id, model_name, model_version, feature, metric, score,
                   threshold, drifted, p_value, window_count, reference_count, window_status, alert_state,
                   window_start, window_end
            FROM drift_scores
            WHERE {_EVENT_WINDOW} AND {_DRIFT_SUBJECT}
              AND ({{feature:String}} = '' OR feature = {{feature:String}}) AND (drifted OR {{drifted_only:UInt8}} = 0)
            ORDER BY subject, feature, metric, event_time LIMIT 1 BY event_id, feature, metric
            LIMIT {{limit:UInt32}}""",
        {**_DRIFT_PARAMETERS, "feature": ("String", ""), "drifted_only": ("UInt8", 0), "limit": ("UInt32", 10000)}),
    NamedQuery(
        "drift_windows_latest", "The newest closed drift window of each subject: its status (scored, "
                                "insufficient_data, reference), the alert state after it (ok, drifting, alert), "
                                "its events and drifted features; default window: a day.",
        f"""SELECT subject, camera_id, sensor_id, model_name, model_version, window_start, window_end, count, status,
                   alert_state, features, drifted_features
            FROM drift_windows WHERE {_EVENT_WINDOW} AND {_DRIFT_SUBJECT}
            ORDER BY subject, event_time DESC LIMIT 1 BY subject""",
        _DRIFT_PARAMETERS, default_window=timedelta(days=1)),
    NamedQuery(
        "drift_alerts_open", "Drift alerts raised and not cleared since (each subject whose newest alert is "
                             "'raised'), newest first, with their top drifting features; default window: the "
                             "store's 400 days of alerts.",
        f"""SELECT event_time AS raised_time, subject, camera_id, sensor_id, model_name, model_version, windows,
                   window_start, window_end, top_features, top_metrics, top_scores, top_thresholds
            FROM (SELECT * FROM drift_alerts WHERE {_EVENT_WINDOW} AND {_DRIFT_SUBJECT}
                  ORDER BY subject, event_time DESC, state = 'cleared' DESC LIMIT 1 BY subject)
            WHERE state = 'raised' ORDER BY raised_time DESC, subject""",
        _DRIFT_PARAMETERS, default_window=timedelta(days=400)),
    NamedQuery(
        "annotation_queue", "The annotation queue: tasks per camera and state (open, leased, submitted, accepted, "
                            "rejected), each task in its latest state (its highest revision), if it reached that "
                            "state in the window, with the oldest task's creation and the last change; default "
                            "window: ten years, i.e. the whole queue.",
        f"""SELECT camera_id, state, count() AS tasks, countIf(labels_wanted >= 2) AS double_labelled,
                   round(avg(priority), 4) AS mean_priority, min(event_time) AS oldest_created,
                   max(published_time) AS last_change
            FROM (SELECT task_id, camera_id, state, labels_wanted, priority, event_time, published_time
                  FROM annotation_tasks
                  WHERE {_CAMERA} AND {_MODEL} ORDER BY task_id, revision DESC, published_time DESC
                  LIMIT 1 BY task_id)
            WHERE {_PUBLISHED_WINDOW}
            GROUP BY camera_id, state ORDER BY camera_id, state""",
        {"camera_id": ("String", ""), "model_name": ("String", "")}, default_window=timedelta(days=3650)),
    NamedQuery(
        "annotation_labels_per_hour", "Labels per hour: annotators' submissions, reviewers' decisions, the tasks "
                                      "accepted and rejected, and the people at work; default window: a day.",
        f"""SELECT toStartOfHour(event_time) AS hour, countIf(kind = 'submission') AS submissions,
                   countIf(kind = 'review') AS reviews, uniqExactIf(task_id, status = 'accepted') AS accepted,
                   uniqExactIf(task_id, status = 'rejected') AS rejected,
                   uniqExactIf(annotator, kind = 'submission' AND annotator != '') AS annotators
            FROM (SELECT * FROM annotations WHERE {_EVENT_WINDOW} AND {_CAMERA} AND {_MODEL} LIMIT 1 BY event_id)
            GROUP BY hour ORDER BY hour""",
        {"camera_id": ("String", ""), "model_name": ("String", "")}, default_window=timedelta(days=1)),
    NamedQuery(
        "annotation_agreement", "Agreement of the tasks labelled twice (IoU-matched F1 of the two labels, 0..1), "
                                "per hour in which each task's agreement was first known: tasks, mean and lowest; "
                                "default window: a week.",
        f"""SELECT toStartOfHour(known) AS hour, count() AS tasks, round(avg(f1), 4) AS mean_agreement,
                   round(min(f1), 4) AS min_agreement
            FROM (SELECT task_id, min(event_time) AS known, argMin(assumeNotNull(agreement), event_time) AS f1
                  FROM annotations
                  WHERE {_EVENT_WINDOW} AND agreement IS NOT NULL AND {_CAMERA} AND {_MODEL}
                  GROUP BY task_id)
            GROUP BY hour ORDER BY hour""",
        {"camera_id": ("String", ""), "model_name": ("String", "")}, default_window=timedelta(days=7)),
    NamedQuery(
        "dataset_events", "What was done to the datasets (vigil.datasets, the audit trail), newest first: versions "
                          "committed and imported, tags, exports, garbage collections, who did each and what it "
                          "did; filters dataset, action, actor; default window: ten years.",
        f"""SELECT event_time, dataset, action, version, actor, message, branch, tag, item_count, parent_versions,
                   manifest
            FROM dataset_events
            WHERE {_EVENT_WINDOW} AND {_DATASET} AND ({{action:String}} = '' OR action = {{action:String}})
              AND ({{actor:String}} = '' OR actor = {{actor:String}})
            ORDER BY event_time DESC, dataset, event_id LIMIT 1 BY event_id LIMIT {{limit:UInt32}}""",
        {"dataset": ("String", ""), "action": ("String", ""), "actor": ("String", ""), "limit": ("UInt32", 1000)},
        default_window=timedelta(days=3650)),
    NamedQuery(
        "dataset_versions", "The versions each dataset was given (committed, or made by an import), each once, "
                            "when first announced (an import's commit and import in one millisecond: as "
                            "committed): items, boxes and the rest of its statistics, its parents, "
                            "branch, author and message; the newest `limit` in the window, per dataset oldest "
                            "first; filters dataset, branch; default window: ten years.",
        f"""SELECT * FROM (
                SELECT event_time, dataset, version, action, branch, actor, message, item_count,
                       statistics['boxes'] AS boxes, parent_versions, statistics
                FROM (SELECT * FROM dataset_events
                      WHERE action IN ('commit', 'import') AND {_DATASET}
                        AND ({{branch:String}} = '' OR branch = {{branch:String}})
                      ORDER BY dataset, version, event_time, action != 'commit' LIMIT 1 BY dataset, version)
                WHERE {_EVENT_WINDOW}
                ORDER BY event_time DESC, dataset, version LIMIT {{limit:UInt32}})
            ORDER BY dataset, event_time, version""",
        {"dataset": ("String", ""), "branch": ("String", ""), "limit": ("UInt32", 1000)},
        default_window=timedelta(days=3650)),
    NamedQuery(
        "training_runs", "The training jobs, newest first: each run's dataset version and base model, its newest "
                         "report (state started/progress/eligible/refused/failed, step, done of total, ETA in s or "
                         "null, seconds since it started), the candidate it registered and the champion it was "
                         "measured against with both mAP@0.5 (null until evaluated) and the reasons of a refusal or "
                         "failure; runs whose newest report is in the window; filters dataset, base_model, state "
                         "(the newest); default window: ten years.",
        f"""SELECT * FROM (
                SELECT run_id, any(dataset) AS dataset, any(dataset_version) AS dataset_version,
                       any(base_model) AS base_model, min(event_time) AS started_time, max(event_time) AS last_time,
                       {_NEWEST_OF_RUN}
                FROM ({_TRAINING_REPORTS} WHERE {_DATASET}
                        AND ({{base_model:String}} = '' OR base_model = {{base_model:String}})
                      LIMIT 1 BY event_id)
                GROUP BY run_id)
            WHERE {_LAST_WINDOW}
              AND ({{state:String}} = '' OR state = {{state:String}})
            ORDER BY started_time DESC, run_id LIMIT {{limit:UInt32}}""",
        {"dataset": ("String", ""), "base_model": ("String", ""), "state": ("String", ""), "limit": ("UInt32", 50)},
        default_window=timedelta(days=3650)),
    NamedQuery(
        "training_events", "Every report of the training jobs, oldest first (a run's progress: state, step, done "
                           "of total, ETA, elapsed); filter run_id; the newest `limit` in the window; default "
                           "window: a day.",
        f"""SELECT * FROM (
                SELECT event_time, run_id, dataset, dataset_version, base_model, state, step, done, total, eta_s,
                       elapsed_s, candidate_version, candidate_map50, champion_map50, reasons
                FROM training_runs
                WHERE {_EVENT_WINDOW} AND ({{run_id:String}} = '' OR run_id = {{run_id:String}})
                ORDER BY event_time DESC, elapsed_s DESC, {_TRAINING_STATE_RANK} DESC LIMIT 1 BY event_id
                LIMIT {{limit:UInt32}})
            ORDER BY run_id, event_time, elapsed_s, {_TRAINING_STATE_RANK}""",
        {"run_id": ("String", ""), "limit": ("UInt32", 1000)}, default_window=timedelta(days=1)),
    NamedQuery(
        "rollout_steps", "Each model's rollout steps in order (shadow, canary, promoted or rolled_back): the "
                         "candidate and champion versions, the stage left and entered, why, the live checks over "
                         "the stage that ended, the canary's share of cameras, who took the step and the cameras "
                         "the candidate was trained on; the newest "
                         "`limit` in the window, per model oldest first; filters model_name, candidate_version; "
                         "default window: ten years.",
        f"""SELECT * FROM (
                SELECT event_time, model_name, candidate_version, registry_version, champion_version, previous_stage,
                       stage, reason, checks, canary_share, actor, cameras
                FROM rollout_events
                WHERE {_EVENT_WINDOW} AND {_MODEL}
                  AND ({{candidate_version:String}} = '' OR candidate_version = {{candidate_version:String}})
                ORDER BY event_time DESC, {_ROLLOUT_STAGE_RANK} DESC LIMIT 1 BY event_id LIMIT {{limit:UInt32}})
            ORDER BY model_name, event_time, {_ROLLOUT_STAGE_RANK}""",
        {"model_name": ("String", ""), "candidate_version": ("String", ""), "limit": ("UInt32", 1000)},
        default_window=timedelta(days=3650)),
    NamedQuery(
        "rollouts", "Each candidate version's rollout, newest first: its stages in order (e.g. shadow, canary, "
                    "promoted), where it is now, why its newest step was taken, the champion, the cameras it "
                    "was trained on, when it began and last moved; candidates whose newest step is in the window; filter model_name; default "
                    "window: ten years.",
        f"""SELECT * FROM (
                SELECT model_name, candidate_version, max(registry_version) AS registry_version,
                       argMax(champion_version, ordering) AS champion_version,
                       arrayMap(step -> step.2, arraySort(groupArray((ordering, stage_entered)))) AS stages,
                       argMax(stage, ordering) AS stage, argMax(reason, ordering) AS reason,
                       argMax(checks, ordering) AS checks, argMax(canary_share, ordering) AS canary_share,
                       arraySort(groupUniqArrayArray(cameras)) AS cameras, min(event_time) AS started_time,
                       max(event_time) AS last_time
                FROM (SELECT *, (event_time, {_ROLLOUT_STAGE_RANK}) AS ordering, stage AS stage_entered
                      FROM rollout_events
                      WHERE {_MODEL} LIMIT 1 BY event_id)
                GROUP BY model_name, candidate_version)
            WHERE {_LAST_WINDOW}
            ORDER BY started_time DESC, model_name, candidate_version LIMIT {{limit:UInt32}}""",
        {"model_name": ("String", ""), "limit": ("UInt32", 100)}, default_window=timedelta(days=3650)),
    NamedQuery(
        "dead_letter_rate", "Dead letters per minute, origin topic and reason, and per second.",
        f"""SELECT minute, origin_topic, reason, sum(letters) AS letters, round(letters / 60, 4) AS per_second
            FROM dead_letters_minute WHERE {_WINDOW}
            GROUP BY minute, origin_topic, reason ORDER BY minute, origin_topic, reason"""),
    NamedQuery(
        "sensor_anomalies", "Sensor readings the anomaly model flagged, newest first, with their score and "
                            "threshold; anomalies_only=0 lists every scored reading.",
        f"""SELECT event_time, sensor_id, quantity, value, unit, score, threshold, anomaly, model_name, model_version
            FROM sensor_anomalies
            WHERE {_EVENT_WINDOW} AND ({{sensor_id:String}} = '' OR sensor_id = {{sensor_id:String}})
              AND (anomaly OR {{anomalies_only:UInt8}} = 0)
            ORDER BY event_time DESC, sensor_id LIMIT 1 BY event_id LIMIT {{limit:UInt32}}""",
        {"sensor_id": ("String", ""), "anomalies_only": ("UInt8", 1), "limit": ("UInt32", 1000)}),
    NamedQuery(
        "model_versions", "The models' stage changes announced by the registry (primary, retired...), newest "
                          "first, with what caused each (action) and who; default window: ten years.",
        f"""SELECT event_time, model_name, model_version, model_precision, stage, metadata['action'] AS action,
                   metadata['by'] AS announced_by, artifact
            FROM model_versions WHERE {_EVENT_WINDOW} AND {_MODEL}
            ORDER BY event_time DESC, model_name, stage LIMIT 1 BY event_id LIMIT {{limit:UInt32}}""",
        {"model_name": ("String", ""), "limit": ("UInt32", 1000)}, default_window=timedelta(days=3650)),
    NamedQuery(
        "recent_detections", "The detections of one camera's latest results (the dashboard's live view).",
        """SELECT toString(event_id) AS event_id, toString(frame_event_id) AS frame_event_id, event_time,
                  frame_sequence, width, height, labels, scores, boxes
           FROM inference_events
           WHERE camera_id = {camera_id:String} AND NOT shadow
             AND event_time >= {since:DateTime64(3, 'UTC')} AND event_time < {until:DateTime64(3, 'UTC')}
           ORDER BY event_time DESC LIMIT {limit:UInt32}""",
        {"camera_id": ("String", ""), "limit": ("UInt32", 5)}),
)}


def _clickhouse_time(value: Any, name: str) -> str:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise BadParameter(f"{name} is not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def bind(query: NamedQuery, given: Mapping[str, Any] | None, now: datetime | None = None) -> dict[str, Any]:
    """The parameters to run `query` with: given values checked and converted, defaults for the rest."""
    given = dict(given or {})
    unknown = set(given) - set(query.parameters) - {"since", "until"}
    if unknown:
        raise BadParameter(f"{query.name} has no parameter {', '.join(sorted(unknown))}; it takes "
                           f"{', '.join(['since', 'until', *query.parameters])}")
    until = given.get("until") or (now or datetime.now(timezone.utc))
    since = given.get("since") or _parse_or_pass(until) - query.default_window
    bound: dict[str, Any] = {"since": _clickhouse_time(since, "since"), "until": _clickhouse_time(until, "until")}
    for name, (ch_type, default) in query.parameters.items():
        value = given.get(name, default)
        if ch_type.startswith("UInt"):
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise BadParameter(f"{name} must be a whole number: {value!r}") from None
            if value < 0:
                raise BadParameter(f"{name} must not be negative: {value}")
        else:
            value = str(value)
        bound[name] = value
    return bound


def _parse_or_pass(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    moment = datetime.fromisoformat(_clickhouse_time(value, "until"))
    return moment.replace(tzinfo=timezone.utc)
