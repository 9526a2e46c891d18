// State shared by the audio thread, the daemon thread and the message thread, and how it is handed over.
// The audio thread touches only atomics and takes published through TakeSlots (never a lock or an allocation).
#pragma once

#include <juce_core/juce_core.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

constexpr int kSlots = 16;      // stored takes; MIDI note kFirstNote + k addresses slot k
constexpr int kFirstNote = 36;  // C1

// One take, immutable once published. `left`/`right` are at the host's rate (what the audio thread plays);
// `pcm` is the daemon's audio as it came (interleaved, `rate`, `channels`), kept for inpainting and export.
struct Take
{
    std::vector<float> left, right;
    double hostRate = 0;
    std::vector<float> pcm;
    int rate = 0, channels = 1;
    int64_t seed = -1;
    double bpm = 120.0;
    int beatsPerBar = 4;
    std::string prompt, path;
};

// Single-producer (the daemon thread) hand-over of takes to the one audio thread, with one hazard pointer:
// the audio thread announces the take it reads, the daemon thread frees a replaced take only once the audio
// thread no longer announces it. All operations are lock-free atomics (seq_cst).
class TakeSlots
{
public:
    ~TakeSlots()
    {
        for (auto& s : slots)
            delete s.exchange (nullptr);
        for (auto* t : retired)
            delete t;
    }

    // Daemon thread only.
    void publish (int slot, Take* take)
    {
        if (auto* old = slots[(size_t) slot].exchange (take))
            retired.push_back (old);
        collect();
    }
    void collect()
    {
        for (size_t i = 0; i < retired.size();)
        {
            if (hazard.load() != retired[i])
            {
                delete retired[i];
                retired[i] = retired.back();
                retired.pop_back();
            }
            else
                ++i;
        }
    }
    const Take* peek (int slot) const { return slots[(size_t) slot].load(); }  // daemon thread: it owns the takes

    // Audio thread only: the take in `slot`, safe to read until the next acquire() or release().
    const Take* acquire (int slot) noexcept
    {
        for (int attempt = 0; attempt < 4; ++attempt)
        {
            Take* p = slots[(size_t) slot].load();
            hazard.store (p);
            if (slots[(size_t) slot].load() == p)
                return p;
        }
        hazard.store (nullptr);
        return nullptr;
    }
    void release() noexcept { hazard.store (nullptr); }
    bool filled (int slot) const noexcept { return slots[(size_t) slot].load() != nullptr; }

private:
    std::array<std::atomic<Take*>, kSlots> slots {};
    std::atomic<Take*> hazard { nullptr };
    std::vector<Take*> retired;  // daemon thread only
};

// The musician's settings: written by the editor and by state restore, read by the daemon thread (all
// non-real-time threads, under `lock`); `bars` and `loop` are mirrored in atomics for the audio thread.
struct Settings
{
    std::mutex lock;
    juce::String prompt { "warm rhodes chords" };
    juce::String preset { "balanced" };
    int64_t seed = -1;  // -1: the daemon picks one
    int variations = 4;
    double inpaintStartBar = 1.0, inpaintEndBar = 2.0;
    juce::String address { "tcp://127.0.0.1:5555" };
    juce::String takeDir;
    int selectedSlot = 0;

    std::atomic<int> bars { 4 };
    std::atomic<bool> loop { true };
};

// What the daemon thread reports to the editor (status text under a lock; the rest atomics).
struct Report
{
    enum Light { Unknown = 0, Connected = 1, Unreachable = 2 };
    std::atomic<int> light { Unknown };
    std::atomic<float> progress { 0.0f };
    std::atomic<bool> busy { false };
    std::atomic<uint32_t> takesDone { 0 };

    std::mutex lock;
    juce::String status, error;
    juce::StringArray presets { "live", "balanced", "studio", "reference" };
    std::array<std::string, kSlots> paths;   // WAV of each slot ("" when empty)
    std::array<int64_t, kSlots> seeds {};

    // MAGNET_RT_PLUGIN_LOG=1: every status and error also goes to stderr (headless hosts, tests).
    void setError (const juce::String& e) { log (e); std::lock_guard<std::mutex> g (lock); error = e; }
    void setStatus (const juce::String& s) { log (s); std::lock_guard<std::mutex> g (lock); status = s; }
    static void log (const juce::String& s)
    {
        static const bool on = std::getenv ("MAGNET_RT_PLUGIN_LOG") != nullptr;
        if (on && s.isNotEmpty())
            std::fprintf (stderr, "magnet-rt plugin: %s\n", s.toRawUTF8());
    }
};

// The host's musical time as last seen by the audio thread.
struct HostTime
{
    std::atomic<double> bpm { 120.0 };
    std::atomic<int> numerator { 4 }, denominator { 4 };
    std::atomic<double> sampleRate { 0.0 };
};
