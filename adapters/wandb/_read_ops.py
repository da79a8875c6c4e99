"""The GraphQL queries the W&B source sends (read-only: no mutation lives here).

Why here: they are the read contract with a W&B server; each follows the official SDK's
operation of the same name (``wandb/apis/public/runs.py``, ``projects.py``, ``files.py`` and
wandb-core's ``HistoryPage`` / ``RunConsoleLogPage``; see wandb-protocol.md §3) so a server that
answers the SDK answers us. Fields beyond the SDK's: ``eventsLineCount`` / ``logLineCount`` on
runs (from wandb-core's ``RunResumeStatus``) and ``events(samples:)`` (``run.history(stream=
"system")``), asked with ``samples`` = the stream's line count so nothing is sampled away.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any

from ._gql import call

GET_PROJECTS = """
query GetProjects($entity: String, $cursor: String, $perPage: Int = 50) {
  models(entityName: $entity, after: $cursor, first: $perPage) {
    pageInfo { endCursor hasNextPage }
    edges { node { id name entityName } }
  }
}"""

PROJECT = """
query Project($project: String!, $entity: String!) {
  project(name: $project, entityName: $entity) { id name entityName }
}"""

RUN_FRAGMENT = """
fragment RunFragment on Run {
  id tags name displayName sweepName state config group jobType commit readOnly createdAt
  heartbeatAt description notes systemMetrics summaryMetrics historyLineCount
  eventsLineCount logLineCount
  user { name username }
  historyKeys
}"""

RUNS = """
query Runs($project: String!, $entity: String!, $cursor: String, $perPage: Int = 50, $order: String,
  $filters: JSONString) {
  project(name: $project, entityName: $entity) {
    internalId
    runCount(filters: $filters)
    readOnly
    runs(filters: $filters, after: $cursor, first: $perPage, order: $order) {
      edges { node { projectId ...RunFragment } cursor }
      pageInfo { endCursor hasNextPage }
    }
  }
}""" + RUN_FRAGMENT

RUN = """
query Run($project: String!, $entity: String!, $name: String!) {
  project(name: $project, entityName: $entity) { run(name: $name) { ...RunFragment } }
}""" + RUN_FRAGMENT

HISTORY_PAGE = """
query HistoryPage($entity: String!, $project: String!, $run: String!, $minStep: Int64!, $maxStep: Int64!,
  $pageSize: Int!) {
  project(name: $project, entityName: $entity) {
    run(name: $run) { history(minStep: $minStep, maxStep: $maxStep, samples: $pageSize) }
  }
}"""

RUN_EVENTS = """
query RunEvents($entity: String!, $project: String!, $run: String!, $samples: Int) {
  project(name: $project, entityName: $entity) {
    run(name: $run) { eventsLineCount events(samples: $samples) }
  }
}"""

RUN_FILES = """
query RunFiles($project: String!, $entity: String!, $name: String!, $fileCursor: String,
  $fileLimit: Int = 50, $fileNames: [String] = [], $upload: Boolean = false) {
  project(name: $project, entityName: $entity) {
    internalId
    run(name: $name) {
      fileCount
      files(names: $fileNames, after: $fileCursor, first: $fileLimit) {
        edges { node { id name url(upload: $upload) directUrl sizeBytes mimetype updatedAt md5 } cursor }
        pageInfo { endCursor hasNextPage }
      }
    }
  }
}"""

RUN_CONSOLE_LOG_PAGE = """
query RunConsoleLogPage($entity: String!, $project: String!, $runName: String!, $first: Int, $after: String) {
  project(name: $project, entityName: $entity) {
    run(name: $runName) {
      logLineCount
      logLines(first: $first, after: $after, useImprovedPagination: true) {
        edges { node { number timestamp level label line } }
        pageInfo { endCursor hasNextPage }
      }
    }
  }
}"""


async def edges_of(
    api: Any, document: str, variables: dict[str, Any], *, name: str, cursor_var: str,
    connection: Callable[[dict[str, Any]], dict[str, Any] | None],
) -> AsyncGenerator[dict[str, Any], None]:
    """Every node of a cursor-paged GraphQL connection, page by page, as the SDK pages them:
    the next cursor is the last edge's ``cursor`` (else ``pageInfo.endCursor``); stop when
    ``hasNextPage`` is false or a page is empty. ``connection(data)`` finds the connection in
    an answer; None there means its parent does not exist (a LookupError to the caller)."""
    cursor = None
    while True:
        data = await call(api, document, {**variables, cursor_var: cursor}, name=name)
        found = connection(data)
        if found is None:
            raise LookupError(name)
        edges = found.get("edges") or []
        for edge in edges:
            yield edge["node"]
        info = found.get("pageInfo") or {}
        if not edges or not info.get("hasNextPage"):
            return
        cursor = edges[-1].get("cursor") or info.get("endCursor")

RUN_PARQUET_HISTORY = """
query RunParquetHistory($entity: String!, $project: String!, $runName: String!, $liveKeys: [String!]!) {
  project(name: $project, entityName: $entity) {
    run(name: $runName) { parquetHistory(liveKeys: $liveKeys) { parquetUrls liveData } }
  }
}"""
