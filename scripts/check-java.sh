#!/usr/bin/env bash
# Spark needs a Java runtime, 17 or newer. Say exactly how to get one instead of failing later
# inside the JVM launcher with a cryptic message.
set -u
if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then java="$JAVA_HOME/bin/java"; else java=$(command -v java || true); fi
if [ -z "$java" ]; then
  echo "lookalike: Java 17+ is required by Spark and none was found." >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless" >&2
  echo "  macOS:         brew install openjdk@17" >&2
  exit 1
fi
version=$("$java" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
major=${version%%.*}
[ "$major" = "1" ] && major=$(echo "$version" | cut -d. -f2)
if ! [ "${major:-0}" -ge 17 ] 2>/dev/null; then
  echo "lookalike: Java $version found at $java; Spark 4 needs Java 17 or newer." >&2
  echo "  Debian/Ubuntu: sudo apt-get install -y openjdk-17-jre-headless (then set JAVA_HOME)" >&2
  exit 1
fi
