"""Usage: what each finished prediction used and produced, recorded once.

``UsageRecorder`` subscribes to the bus's ``completed`` event and hands the prediction to
its own thread (a subscriber must not block the worker that published), which measures
the output's files (measure.py) and writes one usage row. ``catch_up`` records any
finished prediction that has no row (the process stopped between the two), and the
sweeper (retention.py) runs it before it removes anything, so every prediction is
measured while its files exist.

Denoising steps come from the prediction's input (``num_inference_steps`` or ``steps``,
the model's default when not given); a model without steps counts one. Each still image
adds its width × height × steps to ``pixel_steps``; an animation or a video adds that for
every frame, plus its frames and seconds.
"""

from __future__ import annotations

import logging
import queue
import threading

from sqlalchemy.orm import Session, sessionmaker

from repligate.bus import EventKind, PredictionEvent
from repligate.errors import NotFound
from repligate.measure import measure_output
from repligate.records import Prediction, Usage
from repligate.registry import Registry
from repligate.storage.base import Storage
from repligate.store import predictions as prediction_store
from repligate.store import usage as store

log = logging.getLogger(__name__)

STEP_INPUTS = ("num_inference_steps", "steps")
_CATCH_UP_BATCH = 200


class UsageRecorder:
    def __init__(
        self, sessions: sessionmaker[Session], storage: Storage, registry: Registry
    ) -> None:
        self._sessions = sessions
        self._storage = storage
        self._registry = registry
        self._pending: queue.Queue[Prediction | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- the subscriber -------------------------------------------------------------------

    def on_event(self, event: PredictionEvent) -> None:
        if event.kind is not EventKind.COMPLETED:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name="repligate-usage", daemon=True
                )
                self._thread.start()
        self._pending.put(event.prediction)

    def _work(self) -> None:
        while True:
            prediction = self._pending.get()
            try:
                if prediction is None:
                    return
                self.record(prediction)
            except Exception:
                # Not lost: catch_up records it on the next sweep.
                log.exception("usage of %s not recorded", prediction and prediction.id)
            finally:
                self._pending.task_done()

    def flush(self) -> None:
        """Wait until every prediction handed over so far is recorded."""
        self._pending.join()

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._pending.put(None)
            thread.join()

    # -- recording ------------------------------------------------------------------------

    def record(self, prediction: Prediction) -> Usage | None:
        """Measure and write the usage of a finished prediction; None if it was
        recorded already."""
        usage = self.measure(prediction)
        with self._sessions() as session:
            return usage if store.insert(session, usage) else None

    def measure(self, prediction: Prediction) -> Usage:
        assert prediction.completed_at is not None, "only finished predictions are measured"
        steps = self._steps(prediction)
        images = pixels = pixel_steps = frames = size = 0
        seconds = 0.0
        for measured in measure_output(prediction.output, self._storage):
            size += measured.bytes
            area = measured.width * measured.height * measured.frames
            pixels += area
            pixel_steps += area * steps
            if measured.still:
                images += 1
            else:
                frames += measured.frames
                seconds += measured.seconds
        return Usage(
            prediction_id=prediction.id,
            api_key_id=prediction.api_key_id,
            model=prediction.model,
            status=prediction.status.value,
            created_at=prediction.created_at,
            completed_at=prediction.completed_at,
            predict_time=prediction.predict_time,
            image_count=images,
            pixels=pixels,
            pixel_steps=pixel_steps,
            frames=frames,
            video_seconds=round(seconds, 6),
            output_bytes=size,
        )

    def _steps(self, prediction: Prediction) -> int:
        properties = {}
        try:
            owner, name = prediction.model.split("/", 1)
            properties = self._registry.model(owner, name).schemas["Input"]["properties"]
        except (NotFound, ValueError, KeyError):
            pass
        for field in STEP_INPUTS:
            value = prediction.input.get(field, properties.get(field, {}).get("default"))
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return 1

    def catch_up(self, limit: int = _CATCH_UP_BATCH) -> int:
        """Record finished predictions that have no usage row; returns how many."""
        with self._sessions() as session:
            missing = store.unrecorded(session, limit=limit)
        recorded = 0
        for prediction_id in missing:
            with self._sessions() as session:
                prediction = prediction_store.get(session, prediction_id)
            try:
                if prediction is not None and self.record(prediction) is not None:
                    recorded += 1
            except Exception:
                # One that cannot be measured must not stop the others (nor retention).
                log.exception("usage of %s not recorded", prediction_id)
        return recorded
