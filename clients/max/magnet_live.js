// magnet_live.js: puts a take into Live (Max for Live device only; clients/max/README.md, "unverified in Live").
// Message in: take <path> <seconds> <bpm>. The take goes into the first empty clip slot of the device's own
// track (Live 12.0.5+: ClipSlot.create_audio_clip), warped, with warp markers that make its length
// seconds * bpm / 60 beats at the set's tempo. Out: "clip <slot index>" or "error <sentence>".
autowatch = 1;
inlets = 1;
outlets = 1;

function nativePath(path, os) {
    // The bridge sends forward slashes on every OS (the form Max reads); Live gets the OS's own form.
    return os === "windows" ? path.replace(/\//g, "\\") : path;
}

function firstEmptySlot(track) {
    var count = track.getcount("clip_slots");
    for (var i = 0; i < count; i++) {
        var slot = new LiveAPI("id " + track.get("clip_slots")[2 * i + 1]);
        if (Number(slot.get("has_clip")[0]) === 0) {
            return { index: i, slot: slot };
        }
    }
    return null;
}

function take(path, seconds, bpm) {
    var device = new LiveAPI("this_device");
    var track = new LiveAPI("id " + device.get("canonical_parent")[1]);
    if (Number(track.get("has_audio_input")[0]) !== 1) {
        outlet(0, "error", "the device's track is not an audio track; put the device on an audio track");
        return;
    }
    var free = firstEmptySlot(track);
    if (free === null) {
        outlet(0, "error", "no empty clip slot on this track; add a scene");
        return;
    }
    free.slot.call("create_audio_clip", nativePath(path, max.os));
    var clip = new LiveAPI("id " + free.slot.get("clip")[1]);
    var beats = seconds * bpm / 60.0;
    clip.set("warping", 1);
    clip.call("add_warp_marker", { beat_time: 0.0, sample_time: 0.0 });
    clip.call("add_warp_marker", { beat_time: beats, sample_time: seconds });
    clip.set("looping", 1);
    clip.set("loop_end", beats);
    clip.set("end_marker", beats);
    outlet(0, "clip", free.index);
}

if (typeof module !== "undefined") {
    module.exports = { take: take, nativePath: nativePath, firstEmptySlot: firstEmptySlot };
}
