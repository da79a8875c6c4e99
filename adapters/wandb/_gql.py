"""The GraphQL operations the destination sends, and one call helper that maps W&B's errors.

Why here: the documents are the wire contract with the W&B server (names and shapes follow the
official SDK's operations, see wandb-protocol.md §2); keeping them together makes it easy to
check them against a server. GraphQL answers errors inside a 200 body, so ``call`` turns them
into ``core.errors`` exactly like HTTP statuses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from adapters.http import Classification, HttpClient, classify_default
from core.errors import AuthError, FatalError, NotFoundError

VIEWER = """query Viewer { viewer { id entity username teams { edges { node { name } } } } }"""

UPSERT_BUCKET = """
mutation UpsertBucket($id: String, $name: String, $project: String, $entity: String,
  $groupName: String, $description: String, $displayName: String, $notes: String,
  $commit: String, $config: JSONString, $host: String, $debug: Boolean, $program: String,
  $repo: String, $jobType: String, $state: String, $sweep: String, $tags: [String!],
  $summaryMetrics: JSONString) {
  upsertBucket(input: {id: $id, name: $name, groupName: $groupName, modelName: $project,
    entityName: $entity, description: $description, displayName: $displayName, notes: $notes,
    config: $config, commit: $commit, host: $host, debug: $debug, jobProgram: $program,
    jobRepo: $repo, jobType: $jobType, state: $state, sweep: $sweep, tags: $tags,
    summaryMetrics: $summaryMetrics}) {
    bucket { id name displayName project { id name entity { id name } } historyLineCount eventsLineCount }
    inserted
  }
}"""

RUN_RESUME_STATUS = """
query RunResumeStatus($project: String, $entity: String, $name: String!) {
  model(name: $project, entityName: $entity) {
    id name entity { id name }
    bucket(name: $name, missingOk: true) {
      id name logLineCount historyLineCount eventsLineCount
    }
  }
}"""

CREATE_RUN_FILES = """
mutation CreateRunFiles($entity: String!, $project: String!, $run: String!, $files: [String!]!) {
  createRunFiles(input: {entityName: $entity, projectName: $project, runName: $run, files: $files}) {
    runID uploadHeaders files { name uploadUrl }
  }
}"""

MARK_RUN_FILES_UPLOADED = """
mutation MarkRunFilesUploaded($entity: String!, $project: String!, $run: String!, $files: [String!]!) {
  markRunFilesUploaded(input: {entityName: $entity, projectName: $project, runName: $run, files: $files}) {
    success
  }
}"""

CREATE_ARTIFACT = """
mutation CreateArtifact($input: CreateArtifactInput!) {
  createArtifact(input: $input) {
    artifact { id state digest versionIndex artifactSequence { id name latestArtifact { id } } }
  }
}"""

CREATE_ARTIFACT_MANIFEST = """
mutation CreateArtifactManifest($artifactID: ID!, $baseArtifactID: ID, $name: String!,
  $digest: String!, $entityName: String!, $projectName: String!, $runName: String!,
  $manifestType: ArtifactManifestType!, $includeUpload: Boolean!) {
  createArtifactManifest(input: {artifactID: $artifactID, baseArtifactID: $baseArtifactID,
    name: $name, digest: $digest, entityName: $entityName, projectName: $projectName,
    runName: $runName, type: $manifestType}) {
    artifactManifest {
      id
      file { id uploadUrl @include(if: $includeUpload) uploadHeaders @include(if: $includeUpload) }
    }
  }
}"""

CREATE_ARTIFACT_FILES = """
mutation CreateArtifactFiles($input: CreateArtifactFilesInput!) {
  createArtifactFiles(input: $input) {
    files {
      edges {
        node {
          id name storagePath uploadUrl uploadHeaders
          uploadMultipartUrls { uploadID uploadUrlParts { partNumber uploadUrl } }
          artifact { id }
        }
      }
    }
  }
}"""

COMPLETE_MULTIPART = """
mutation CompleteMultipartUploadArtifact($completeMultipartAction: CompleteMultipartAction!,
  $completedParts: [UploadPartsInput!]!, $artifactID: ID!, $storagePath: String!, $uploadID: String!) {
  completeMultipartUploadArtifact(input: {completeMultipartAction: $completeMultipartAction,
    completedParts: $completedParts, artifactID: $artifactID, storagePath: $storagePath,
    uploadID: $uploadID}) { digest }
}"""

COMMIT_ARTIFACT = """
mutation CommitArtifact($artifactID: ID!) {
  commitArtifact(input: {artifactID: $artifactID}) { artifact { id digest versionIndex } }
}"""


USE_ARTIFACT = """
mutation UseArtifact($input: UseArtifactInput!) {
  useArtifact(input: $input) { artifact { id } }
}"""


RUN_CREATION_KEYS = "/graphql#run-creation/"


def run_creation_key(entity: str, project: str) -> str:
    """The limiter key of UpsertBucket calls that may create runs in ``entity/project``: W&B
    limits run creation per project (80/s by default on Dedicated Cloud and Self-Managed,
    429 + ``Retry-After`` above it); in the endpoint's shared limiter those throttles would pace
    every GraphQL call and every project at one project's rate."""
    return f"{RUN_CREATION_KEYS}{entity}/{project}"


def run_creation_pacing(rate: float) -> dict[str, float]:
    """Limiter settings for a known run-creation limit of ``rate`` per second per project.

    W&B counts creations in a sliding one-second window and answers the first one over it with
    429 + ``Retry-After``: a pause of a second or more, the cost of finding the limit by
    probing. With the limit known, creations start paced just under it (97.5 %) and may climb
    to 99 % of it, never early (no burst tolerance: a burst trips a window below the rate), and
    no second's creations (answered in it or in flight) exceed 99 % of it, which holds at the
    server whatever the network's delays: turns a busy event loop overslept are caught up
    within that count instead of being lost. A refusal still lowers the pace as for any throttle.
    """
    return {"initial_rate": 0.975 * rate, "max_rate": 0.99 * rate, "burst_seconds": 0.0,
            "window_limit": max(1.0, math.floor(0.99 * rate)), "meter_window": 1.0}


def classify_graphql(status: int, headers: Mapping[str, str], body: bytes) -> Classification:
    """HTTP semantics, plus: 409 Conflict is retried (as the SDK does for UpsertBucket), and a
    200 whose errors say RATE_LIMITED is a throttle."""
    if status == 409:
        return Classification.TRANSIENT
    if status == 200 and b"RATE_LIMITED" in body[:4096]:
        return Classification.THROTTLE
    return classify_default(status, headers, body)


async def call(http: HttpClient, document: str, variables: Mapping[str, Any], *, name: str,
               limit_key: str | None = None) -> dict[str, Any]:
    """POST one operation to ``/graphql``; return ``data`` or raise the matching error.
    ``limit_key``: the operation's own limiter (see ``HttpClient.request_json``)."""
    sent = {declared: None for declared in _declared_variables(document)}
    sent.update(variables)
    body = await http.request_json(
        "POST", "graphql", json={"query": document, "variables": sent, "operationName": name}, limit_key=limit_key
    )
    if not isinstance(body, dict):
        raise FatalError(f"wandb: {name}: unexpected answer {str(body)[:200]}", adapter="wandb")
    errors = body.get("errors") or []
    data = body.get("data")
    if errors and not _has_payload(data):
        messages = "; ".join(str(e.get("message")) for e in errors if isinstance(e, dict))
        codes = {str((e.get("extensions") or {}).get("code")) for e in errors if isinstance(e, dict)}
        if codes & {"PERMISSION_ERROR", "UNAUTHENTICATED", "UNAUTHORIZED"}:
            raise AuthError(f"wandb: {name}: {messages}")
        if "NOT_FOUND" in codes:
            raise NotFoundError(f"wandb: {name}: {messages}", adapter="wandb")
        raise FatalError(f"wandb: {name}: {messages}", adapter="wandb")
    return data or {}


def _declared_variables(document: str) -> list[str]:
    """Names declared in the operation header: sent explicitly as null when not given, as the
    SDK does (some servers treat an absent variable differently from null)."""
    header = document.split("{", 1)[0]
    return _VARIABLE.findall(header)


_VARIABLE = re.compile(r"\$(\w+)\s*:")


def _has_payload(data: Any) -> bool:
    return isinstance(data, dict) and any(v is not None for v in data.values())
