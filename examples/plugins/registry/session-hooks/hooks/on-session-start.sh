#!/bin/sh
# Runs when the agent's session starts: record when, for the audit trail inside the workspace.
date -u +"%Y-%m-%dT%H:%M:%SZ session started" >> /tmp/session-hooks.log
