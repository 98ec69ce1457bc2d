#!/usr/bin/env bash
# The whole chain on the real 4-camera lab take (../shared/data/real_multiperson: two people,
# a bystander, Qualisys calibration, 1088x1920 at 60 fps) for each person as the subject, then
# the leave-one-camera-out cross-validation of each refinement: `make real-take`.
#
#   DATA    the take's folder            (default ../shared/data/real_multiperson)
#   OUT     where sessions/results go    (default real_out; ~0.6 GB per person)
#   WHO     people to run                (default "man woman")
#   PREDICTORS                           (default "flow learned")
#   ADAPT=1   also adapt the network to each person on the second half of the take (frames
#             25-49, `mvcap adapt`; ADAPT_SET="--set steps=800" etc.) and compare flow, the
#             shipped network and the adapted one on the first half (frames 0:25:5), which
#             adaptation never saw
#   RIG_REFINE=1  refine the rig's camera poses from both people's keypoints on frames 25-49
#             (`mvcap rig refine --apply`) before the initial estimates; use a fresh OUT (the
#             sessions' initial estimates and subjects must be made with the refined rig)
#
# Every step resumes: rerunning skips what is done. Numbers: docs/BENCHMARKS.md ("Real take").
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/real_multiperson}
OUT=${OUT:-real_out}
WHO=${WHO:-man woman}
PREDICTORS=${PREDICTORS:-flow learned}
MV=${MVCAP:-.venv/bin/mvcap}
[ -d "$DATA/videos" ] || { echo "no take at $DATA (set DATA=...)"; exit 2; }
mkdir -p "$OUT"

# the subject: the person whose hips are at this pixel of the first frame
declare -A SEED=([man]="pixel:cam03:624,940" [woman]="pixel:cam01:820,1320")

[ -f "$OUT/rig.toml" ] || $MV rig convert "$DATA/calibration/Calib.qca.txt" "$OUT/rig.toml"
# every 2nd frame (30 fps): 50 frames x 4 views
[ -f "$OUT/take.h5" ] || $MV ingest "$DATA/videos" --rig "$OUT/rig.toml" --out "$OUT/take.h5" --frames ::2

for who in $WHO; do
  S="$OUT/$who.h5"
  [ -f "$S" ] || cp "$OUT/take.h5" "$S"
  echo "== $who (${SEED[$who]}): detect"
  $MV detect "$S" --subject "${SEED[$who]}"
done
if [ "${RIG_REFINE:-0}" = 1 ] && [ ! -f "$OUT/rig_refined.toml" ]; then
  # shellcheck disable=SC2046
  $MV rig refine $(for who in $WHO; do echo "$OUT/$who.h5"; done) --frames 25:50 --apply --out "$OUT/rig_refined.toml"
fi

for who in $WHO; do
  S="$OUT/$who.h5"
  echo "== $who"
  $MV init "$S"
  [ -f "$OUT/$who.subject.npz" ] || $MV register "$S" --write-session --out "$OUT/$who.subject.npz"
  for p in $PREDICTORS; do
    $MV refine "$S" --predictor "$p" --frames 0:50:5
    $MV validate "$S" --run "$p-joint" --frames ::10
  done
  if [ "${ADAPT:-0}" = 1 ]; then
    A="$OUT/$who.adapted.npz"
    # shellcheck disable=SC2086
    [ -f "$A" ] || $MV adapt "$OUT/$who.subject.npz" --session "$S" --frames 25:50 --out "$A" ${ADAPT_SET:-}
    $MV refine "$S" --predictor flow --frames 0:25:5 --run flow-first-half
    $MV refine "$S" --predictor learned --frames 0:25:5 --run shipped-first-half --set adapted=false
    # stores the adapted subject in the session: later learned runs use its network (adapted = false: not)
    $MV refine "$S" --subject "$A" --predictor learned --frames 0:25:5 --run adapted-first-half
    for r in flow-first-half shipped-first-half adapted-first-half; do
      $MV validate "$S" --run "$r" --frames 0:25:5
    done
  fi
done
