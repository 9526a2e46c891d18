#include "DaemonWorker.h"
#include "Wire.h"

#include <juce_audio_formats/juce_audio_formats.h>

#include <cmath>
#include <soxr.h>
#include <zmq.hpp>

namespace
{
double now() { return juce::Time::getMillisecondCounterHiRes() / 1000.0; }

constexpr double kSilenceS = 2.5;    // PROTOCOL.md §2: Lazy Pirate's wait
constexpr double kPingEveryS = 1.0;
constexpr double kLoopWindowS = 0.75; // magnet_rt/loop.py's DEFAULT_WINDOW_S
constexpr int kFrameRate = 50;

// The whole take to the host's rate, once, off the audio thread: libsoxr's windowed-sinc resampler at its
// "high quality" recipe (what python-soxr's resample() runs by default; tests/test_plugin.py checks the two agree).
// A copy when the rates agree; an empty take if soxr fails (the error is reported).
std::vector<float> toRate (const std::vector<float>& x, int from, double to, std::string& error)
{
    if (from <= 0 || to <= 0 || std::abs (to - from) < 1e-9 || x.empty())
        return x;
    std::vector<float> y ((size_t) std::ceil ((double) x.size() * to / from) + 1);
    const soxr_io_spec_t io = soxr_io_spec (SOXR_FLOAT32_I, SOXR_FLOAT32_I);
    const soxr_quality_spec_t q = soxr_quality_spec (SOXR_HQ, 0);
    size_t done = 0;
    if (soxr_error_t e = soxr_oneshot ((double) from, to, 1, x.data(), x.size(), nullptr, y.data(), y.size(), &done, &io, &q, nullptr))
    {
        error = e;
        return {};
    }
    y.resize (done);
    return y;
}

std::string sentence (juce::String s)
{
    s = s.trim();
    if (s.isEmpty())
        return "Something went wrong.";
    if (! s.endsWithChar ('.') && ! s.endsWithChar ('!') && ! s.endsWithChar ('?'))
        s << ".";
    return s.substring (0, 1).toUpperCase().toStdString() + s.substring (1).toStdString();
}
} // namespace

struct DaemonWorker::Impl
{
    zmq::context_t ctx { 1 };
    std::unique_ptr<zmq::socket_t> sock;
};

DaemonWorker::DaemonWorker (Settings& s, Report& r, TakeSlots& t, HostTime& h, std::atomic<int>& play,
                            std::atomic<uint32_t>& notes, std::atomic<uint32_t>& pressed)
    : settings (s), report (r), slots (t), host (h), playRequest (play), noteGenerate (notes), buttons (pressed),
      impl (std::make_unique<Impl>())
{
    thread = std::thread ([this] { run(); });
}

DaemonWorker::~DaemonWorker()
{
    quit = true;
    if (thread.joinable())
        thread.join();
}

void DaemonWorker::post (Action a, std::vector<std::string> paths)
{
    std::lock_guard<std::mutex> g (qlock);
    queue.push_back ({ a, std::move (paths) });
}

void DaemonWorker::openSocket()
{
    {
        std::lock_guard<std::mutex> g (settings.lock);
        address = settings.address.toStdString();
    }
    impl->sock.reset();
    try
    {
        impl->sock = std::make_unique<zmq::socket_t> (impl->ctx, zmq::socket_type::dealer);
        impl->sock->set (zmq::sockopt::linger, 0);
        impl->sock->connect (address);
        openedAt = lastPing = now();
        send (wire::pack ("hello", "hello-" + std::to_string (++counter), { { "client", wire::Value::ofStr ("magnet-rt-plugin") } }));
    }
    catch (const zmq::error_t& e)
    {
        impl->sock.reset();
        report.light = Report::Unreachable;
        report.setError (sentence ("The daemon address " + juce::String (address) + " is not valid: " + e.what()));
    }
}

void DaemonWorker::send (const std::string& frame)
{
    if (! impl->sock)
        return;
    try { impl->sock->send (zmq::buffer (frame), zmq::send_flags::dontwait); }
    catch (const zmq::error_t&) {}
}

void DaemonWorker::run()
{
    openSocket();
    while (! quit)
    {
        // Replies.
        if (impl->sock)
        {
            zmq::pollitem_t item { impl->sock->handle(), 0, ZMQ_POLLIN, 0 };
            try { zmq::poll (&item, 1, std::chrono::milliseconds (20)); } catch (const zmq::error_t&) {}
            for (int n = 0; n < 256 && (item.revents & ZMQ_POLLIN); ++n)
            {
                zmq::message_t msg;
                zmq::recv_result_t got;
                try { got = impl->sock->recv (msg, zmq::recv_flags::dontwait); } catch (const zmq::error_t&) { break; }
                if (! got)
                    break;
                lastHeard = now();
                if (! connected)
                {
                    connected = true;
                    report.light = Report::Connected;
                    report.setError ({});
                }
                handle (msg.to_string());
            }
        }
        else
            std::this_thread::sleep_for (std::chrono::milliseconds (20));

        // Liveness: ping every second; 2.5 s of silence: unreachable, fail what was in flight, reconnect.
        const double t = now();
        if (impl->sock && t - lastPing >= kPingEveryS)
        {
            lastPing = t;
            send (wire::pack ("ping", "hb-" + std::to_string (++counter), {}));
        }
        if (t - std::max (lastHeard, openedAt) > kSilenceS)
        {
            if (connected || report.light.load() != Report::Unreachable)
                report.setError (sentence ("The daemon at " + juce::String (address)
                                           + " does not answer; start it with 'make serve' (retrying every few seconds)"));
            connected = false;
            report.light = Report::Unreachable;
            failAll ("The daemon stopped answering before the take was finished; press Generate again once the light is green.");
            openSocket();
        }

        // Notes that asked for a new take (from the audio thread; kept until the daemon answers), then actions.
        if (uint32_t notes = connected ? noteGenerate.exchange (0) : 0)
            for (int k = 0; k < kSlots; ++k)
                if (notes & (1u << k))
                    start (Action::Generate, k, true);
        // Buttons pressed from the host (trigger parameters; bit k is Action k), then the editor's actions.
        if (uint32_t pressed = buttons.exchange (0))
            for (auto a : { Action::Generate, Action::Variations, Action::Loop, Action::Inpaint, Action::Cancel })
                if (pressed & (1u << (int) a))
                    act ({ a, {} });
        std::deque<Cmd> cmds;
        {
            std::lock_guard<std::mutex> g (qlock);
            cmds.swap (queue);
        }
        for (auto& c : cmds)
            act (c);

        // The host changed its rate: rebuild every take's playable copy.
        const double hr = host.sampleRate.load();
        if (hr > 0 && hr != rateBuilt)
        {
            rateBuilt = hr;
            for (int k = 0; k < kSlots; ++k)
                if (auto* old = slots.peek (k); old != nullptr && old->hostRate != hr)
                {
                    auto* copy = makeTake (old->pcm, old->rate, old->channels);
                    copy->seed = old->seed; copy->bpm = old->bpm; copy->beatsPerBar = old->beatsPerBar;
                    copy->prompt = old->prompt; copy->path = old->path;
                    slots.publish (k, copy);
                }
        }
        slots.collect();
        report.busy = ! jobs.empty();
    }
    impl->sock.reset();
}

void DaemonWorker::act (const Cmd& c)
{
    if (c.a == Action::Reconnect) { connected = false; report.light = Report::Unknown; failAll ("The daemon address changed before the take was finished."); openSocket(); }
    else if (c.a == Action::LoadTakes) loadTakes (c.paths);
    else if (c.a == Action::Cancel)
    {
        for (auto& [id, job] : jobs)
            send (wire::pack ("cancel", "c-" + std::to_string (++counter), { { "target", wire::Value::ofStr (id) } }));
    }
    else if (c.a == Action::Rebuild) rateBuilt = 0;
    else
    {
        int slot;
        { std::lock_guard<std::mutex> g (settings.lock); slot = settings.selectedSlot; }
        start (c.a, slot, true);
    }
}

void DaemonWorker::start (Action a, int slot, bool play)
{
    Job job;
    job.kind = a;
    job.firstSlot = slot;
    job.play = play;
    job.bpm = host.bpm.load();
    job.beatsPerBar = std::max (1, host.numerator.load());
    const double beatS = 60.0 / job.bpm * 4.0 / std::max (1, host.denominator.load());
    const int bars = std::max (1, settings.bars.load());
    std::string preset;
    int64_t seed;
    int variations;
    double inStart, inEnd;
    {
        std::lock_guard<std::mutex> g (settings.lock);
        job.prompt = settings.prompt.toStdString();
        preset = settings.preset.toStdString();
        seed = settings.seed;
        variations = settings.variations;
        inStart = settings.inpaintStartBar;
        inEnd = settings.inpaintEndBar;
    }
    if (! connected)
    {
        report.setError (sentence ("The daemon at " + juce::String (address) + " is not connected yet; start it with 'make serve' and try again"));
        return;
    }
    if (juce::String (job.prompt).trim().isEmpty())
    {
        report.setError ("Type a prompt first.");
        return;
    }
    job.id = "p" + std::to_string (++counter);
    wire::Map f {
        { "prompt", wire::Value::ofStr (job.prompt) },
        { "preset", wire::Value::ofStr (preset) },
        { "stream", wire::Value::ofMap ({ { "progress", wire::Value::ofBool (true) } }) },
        { "format", wire::Value::ofStr ("f32") },
        { "chunk_s", wire::Value::ofFloat (5.0) },
    };
    if (seed >= 0)
        f.push_back ({ "seed", wire::Value::ofInt (seed) });
    const double seconds = bars * job.beatsPerBar * beatS;

    if (a == Action::Inpaint)
    {
        const Take* t = slots.peek (slot);
        if (t == nullptr)
        {
            report.setError ("Slot " + juce::String (slot + 1) + " has no take to inpaint; generate one first.");
            return;
        }
        job.bpm = t->bpm;
        job.beatsPerBar = t->beatsPerBar;
        f.erase (std::remove_if (f.begin(), f.end(), [] (auto& kv) { return kv.first == "prompt"; }), f.end());
        f.push_back ({ "prompt", wire::Value::ofStr (job.prompt) });
        f.push_back ({ "source", wire::Value::ofMap ({ { "audio", wire::Value::ofMap ({
                          { "data", wire::Value::ofBin (wire::encodeF32 (t->pcm.data(), t->pcm.size())) },
                          { "sample_rate", wire::Value::ofInt (t->rate) },
                          { "channels", wire::Value::ofInt (t->channels) },
                          { "format", wire::Value::ofStr ("f32") } }) } }) });
        f.push_back ({ "start_bar", wire::Value::ofFloat (inStart) });
        f.push_back ({ "end_bar", wire::Value::ofFloat (inEnd) });
        f.push_back ({ "bpm", wire::Value::ofFloat (t->bpm) });
        f.push_back ({ "beats_per_bar", wire::Value::ofInt (t->beatsPerBar) });
        send (wire::pack ("inpaint", job.id, f));
    }
    else
    {
        if (a == Action::Variations)
        {
            job.outputs = std::clamp (variations, 1, 8);
            f.push_back ({ "variations", wire::Value::ofInt (job.outputs) });
        }
        if (a == Action::Loop)
        {
            // Phase 1 of magnet_rt/loop.py: whole frames covering the loop; phase 2 seals the wrap (in finish).
            const double sr = 32000.0;
            job.loopSamples = (int64_t) std::llround (seconds * sr);
            const double frames = std::ceil (job.loopSamples * (double) kFrameRate / sr - 1e-9);
            f.push_back ({ "duration_s", wire::Value::ofFloat (frames / kFrameRate) });
        }
        else
            f.push_back ({ "duration_s", wire::Value::ofFloat (seconds) });
        send (wire::pack ("generate", job.id, f));
    }
    job.pcm.assign ((size_t) job.outputs, {});
    report.progress = 0.0f;
    report.setError ({});
    report.setStatus ("Slot " + juce::String (slot + 1) + ": sent.");
    jobs[job.id] = std::move (job);
    report.busy = true;
}

void DaemonWorker::startInpaintRaw (Job job, const std::vector<float>& pcm, int rate, int channels, double startS, double endS)
{
    job.id = "p" + std::to_string (++counter);
    std::string preset;
    { std::lock_guard<std::mutex> g (settings.lock); preset = settings.preset.toStdString(); }
    wire::Map f {
        { "prompt", wire::Value::ofStr (job.prompt) },
        { "preset", wire::Value::ofStr (preset) },
        { "stream", wire::Value::ofMap ({ { "progress", wire::Value::ofBool (true) } }) },
        { "source", wire::Value::ofMap ({ { "audio", wire::Value::ofMap ({
            { "data", wire::Value::ofBin (wire::encodeF32 (pcm.data(), pcm.size())) },
            { "sample_rate", wire::Value::ofInt (rate) },
            { "channels", wire::Value::ofInt (channels) },
            { "format", wire::Value::ofStr ("f32") } }) } }) },
        { "start_s", wire::Value::ofFloat (startS) },
        { "end_s", wire::Value::ofFloat (endS) },
    };
    if (job.seed >= 0)
        f.push_back ({ "seed", wire::Value::ofInt (job.seed) });
    send (wire::pack ("inpaint", job.id, f));
    job.pcm.assign (1, {});
    jobs[job.id] = std::move (job);
}

void DaemonWorker::handle (const std::string& frame)
{
    const auto r = wire::unpack (frame.data(), frame.size());
    if (r.type == "welcome")
    {
        std::lock_guard<std::mutex> g (report.lock);
        if (! r.presets.empty())
        {
            report.presets.clear();
            for (auto& p : r.presets)
                report.presets.add (p);
        }
        report.status = "Connected to " + juce::String (address) + ".";
        return;
    }
    auto it = jobs.find (r.id);
    if (it == jobs.end())
        return;  // pongs, cancel replies, replies to requests of an older connection
    Job& job = it->second;
    if (r.type == "accepted")
    {
        if (r.ints.count ("seed"))
            job.seed = r.ints.at ("seed");
        report.setStatus ("Slot " + juce::String (job.firstSlot + 1) + ": accepted (queue position "
                          + juce::String (r.num.count ("queue_position") ? (int) r.num.at ("queue_position") : 0) + ").");
    }
    else if (r.type == "progress")
    {
        const double step = r.num.count ("step") ? r.num.at ("step") : 0, total = r.num.count ("total") ? r.num.at ("total") : 1;
        const float phase = job.kind == Action::Loop ? (job.loopShift > 0 ? 0.5f : 0.0f) : 0.0f;
        const float scale = job.kind == Action::Loop ? 0.5f : 1.0f;
        report.progress = phase + scale * (float) (step / std::max (1.0, total));
    }
    else if (r.type == "audio")
    {
        const int v = r.num.count ("variation") ? (int) r.num.at ("variation") : 0;
        if (v < 0 || v >= (int) job.pcm.size())
            return;
        job.rate = r.num.count ("sample_rate") ? (int) r.num.at ("sample_rate") : 32000;
        job.channels = r.num.count ("channels") ? (int) r.num.at ("channels") : 1;
        auto samples = wire::decodePcm (r.data, r.str.count ("format") ? r.str.at ("format") : "f32");
        auto& dst = job.pcm[(size_t) v];
        dst.insert (dst.end(), samples.begin(), samples.end());
    }
    else if (r.type == "done")
    {
        Job done = std::move (job);
        jobs.erase (it);
        finish (done, r.ints);
    }
    else if (r.type == "cancelled")
    {
        report.setStatus ("Slot " + juce::String (job.firstSlot + 1) + ": cancelled.");
        report.progress = 0.0f;
        jobs.erase (it);
    }
    else if (r.type == "error")
    {
        report.setError (sentence (r.str.count ("message") ? juce::String (r.str.at ("message")) : juce::String ("The daemon refused the request")));
        report.progress = 0.0f;
        jobs.erase (it);
    }
}

void DaemonWorker::finish (Job& job, const std::map<std::string, int64_t>&)
{
    if (job.kind == Action::Loop && job.loopShift == 0 && ! job.pcm.empty())
    {
        // Phase 2: trim to the loop's exact length at the take's rate, rotate by half, inpaint around the wrap.
        auto pcm = std::move (job.pcm[0]);
        const int ch = std::max (1, job.channels);
        const int64_t n = (int64_t) std::llround ((double) job.loopSamples * job.rate / 32000.0);
        if ((int64_t) pcm.size() / ch < n)
        {
            report.setError ("The daemon's take was shorter than the loop; try more bars.");
            return;
        }
        pcm.resize ((size_t) (n * ch));
        const int64_t shift = n / 2;
        std::vector<float> rotated (pcm.size());
        for (int64_t i = 0; i < n; ++i)
            for (int c = 0; c < ch; ++c)
                rotated[(size_t) (i * ch + c)] = pcm[(size_t) (((i + shift) % n) * ch + c)];
        const int64_t wrap = n - shift, half = (int64_t) std::llround (kLoopWindowS * job.rate / 2);
        job.loopShift = (int) shift;
        job.loopSamples = n;
        const int rate = job.rate;
        startInpaintRaw (std::move (job), rotated, rate, ch, (double) (wrap - half) / rate, (double) (wrap + half) / rate);
        return;
    }
    for (int k = 0; k < (int) job.pcm.size(); ++k)
    {
        auto pcm = std::move (job.pcm[(size_t) k]);
        if (job.kind == Action::Loop)
        {
            const int ch = std::max (1, job.channels);
            const int64_t n = (int64_t) pcm.size() / ch, shift = job.loopShift;
            std::vector<float> back (pcm.size());
            for (int64_t i = 0; i < n; ++i)
                for (int c = 0; c < ch; ++c)
                    back[(size_t) (((i + shift) % n) * ch + c)] = pcm[(size_t) (i * ch + c)];
            pcm = std::move (back);
        }
        Take* t = makeTake (std::move (pcm), job.rate, job.channels);
        t->seed = job.seed;
        t->bpm = job.bpm;
        t->beatsPerBar = job.beatsPerBar;
        t->prompt = job.prompt;
        const int slot = (job.firstSlot + k) % kSlots;
        t->path = writeWav (*t, slot);
        adopt (slot, t, job.play && k == 0);
    }
    report.progress = 1.0f;
    report.setStatus ("Slot " + juce::String (job.firstSlot + 1) + ": take ready (seed " + juce::String (job.seed) + ").");
    report.takesDone.fetch_add (1);
}

void DaemonWorker::adopt (int slot, Take* t, bool play)
{
    {
        std::lock_guard<std::mutex> g (report.lock);
        report.paths[(size_t) slot] = t->path;
        report.seeds[(size_t) slot] = t->seed;
    }
    slots.publish (slot, t);
    if (play)
        playRequest.store (slot);
}

Take* DaemonWorker::makeTake (std::vector<float> pcm, int rate, int channels) const
{
    auto* t = new Take();
    t->rate = rate;
    t->channels = std::max (1, channels);
    const size_t n = pcm.size() / (size_t) t->channels;
    std::vector<float> l (n), r (n);
    for (size_t i = 0; i < n; ++i)
    {
        l[i] = pcm[i * (size_t) t->channels];
        r[i] = pcm[i * (size_t) t->channels + (size_t) (t->channels - 1)];
    }
    const double hr = host.sampleRate.load();
    t->hostRate = hr > 0 ? hr : rate;
    std::string error;
    t->left = toRate (l, rate, t->hostRate, error);
    t->right = t->channels == 1 ? t->left : toRate (r, rate, t->hostRate, error);
    if (! error.empty())
        report.setError (sentence ("The take could not be resampled to " + juce::String (t->hostRate) + " Hz: " + error));
    t->pcm = std::move (pcm);
    return t;
}

std::string DaemonWorker::writeWav (const Take& t, int slot) const
{
    juce::File dir;
    {
        std::lock_guard<std::mutex> g (settings.lock);
        dir = settings.takeDir.isNotEmpty() ? juce::File (settings.takeDir)
                                            : juce::File::getSpecialLocation (juce::File::userMusicDirectory).getChildFile ("magnet-rt takes");
    }
    if (! dir.createDirectory())
        return {};
    const auto name = "take-" + juce::Time::getCurrentTime().formatted ("%Y%m%d-%H%M%S") + "-slot" + juce::String (slot + 1)
                      + "-seed" + juce::String (t.seed) + "-" + juce::String ((juce::int64) counter) + ".wav";
    auto file = dir.getChildFile (name);
    auto part = dir.getChildFile (name + ".part");
    {
        juce::WavAudioFormat wav;
        std::unique_ptr<juce::OutputStream> out (part.createOutputStream().release());
        if (out == nullptr)
            return {};
        std::unique_ptr<juce::AudioFormatWriter> w (wav.createWriterFor (out.get(), (double) t.rate, (unsigned) t.channels, 32, {}, 0));
        if (w == nullptr)
            return {};
        out.release();  // the writer owns the stream now
        const int n = (int) (t.pcm.size() / (size_t) t.channels);
        juce::AudioBuffer<float> buf (t.channels, n);
        for (int i = 0; i < n; ++i)
            for (int c = 0; c < t.channels; ++c)
                buf.setSample (c, i, t.pcm[(size_t) (i * t.channels + c)]);
        w->writeFromAudioSampleBuffer (buf, 0, n);
    }
    part.moveFileTo (file);  // whole or not at all: a reader never sees a half-written take
    return file.getFullPathName().toStdString();
}

void DaemonWorker::loadTakes (const std::vector<std::string>& paths)
{
    juce::AudioFormatManager fm;
    fm.registerBasicFormats();
    for (int k = 0; k < kSlots && k < (int) paths.size(); ++k)
    {
        if (paths[(size_t) k].empty())
            continue;
        juce::File f (paths[(size_t) k]);
        std::unique_ptr<juce::AudioFormatReader> r (fm.createReaderFor (f));
        if (r == nullptr)
        {
            report.setError ("The take of slot " + juce::String (k + 1) + " (" + f.getFileName() + ") could not be read.");
            continue;
        }
        const int ch = (int) std::min<juce::uint32> (2, r->numChannels), n = (int) r->lengthInSamples;
        juce::AudioBuffer<float> buf (ch, n);
        r->read (&buf, 0, n, 0, true, ch > 1);
        std::vector<float> pcm ((size_t) (n * ch));
        for (int i = 0; i < n; ++i)
            for (int c = 0; c < ch; ++c)
                pcm[(size_t) (i * ch + c)] = buf.getSample (c, i);
        Take* t = makeTake (std::move (pcm), (int) r->sampleRate, ch);
        t->path = paths[(size_t) k];
        {
            std::lock_guard<std::mutex> g (report.lock);
            t->seed = report.seeds[(size_t) k];
        }
        adopt (k, t, false);
    }
}

void DaemonWorker::failAll (const juce::String& why)
{
    if (jobs.empty())
        return;
    jobs.clear();
    report.progress = 0.0f;
    report.setError (why);
}
