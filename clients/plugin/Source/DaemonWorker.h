// The daemon thread: owns the ZeroMQ DEALER socket, sends requests, reads replies, assembles takes, writes
// their WAVs and publishes them to the audio thread. Nothing here runs on the audio thread.
#pragma once

#include "Shared.h"

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <thread>

class DaemonWorker
{
public:
    // The first five are the musician's buttons (and bits 0-4 of `buttons`, set by the audio thread).
    enum class Action { Generate, Variations, Loop, Inpaint, Cancel, Reconnect, LoadTakes, Rebuild };

    DaemonWorker (Settings&, Report&, TakeSlots&, HostTime&, std::atomic<int>& playRequest,
                  std::atomic<uint32_t>& noteGenerate, std::atomic<uint32_t>& buttons);
    ~DaemonWorker();

    void post (Action a, std::vector<std::string> paths = {});  // message thread: queue an action

private:
    struct Job
    {
        std::string id;
        Action kind;
        int firstSlot = 0, outputs = 1;
        bool play = true;
        std::vector<std::vector<float>> pcm;
        int rate = 0, channels = 1;
        double bpm = 120.0;
        int beatsPerBar = 4;
        int64_t loopSamples = 0, seed = -1;
        int loopShift = 0;
        std::string prompt;
    };
    struct Cmd { Action a; std::vector<std::string> paths; };

    void run();
    void act (const Cmd&);
    void openSocket();
    void send (const std::string& frame);
    void handle (const std::string& frame);
    void start (Action a, int slot, bool play);
    void startInpaintRaw (Job job, const std::vector<float>& pcm, int rate, int channels, double startS, double endS);
    void finish (Job& job, const std::map<std::string, int64_t>& ints);
    void failAll (const juce::String& why);
    void loadTakes (const std::vector<std::string>& paths);
    Take* makeTake (std::vector<float> pcm, int rate, int channels) const;
    void adopt (int slot, Take* t, bool play);
    std::string writeWav (const Take&, int slot) const;

    Settings& settings;
    Report& report;
    TakeSlots& slots;
    HostTime& host;
    std::atomic<int>& playRequest;
    std::atomic<uint32_t>& noteGenerate;
    std::atomic<uint32_t>& buttons;

    std::mutex qlock;
    std::deque<Cmd> queue;
    std::atomic<bool> quit { false };

    // daemon thread only
    std::string address;
    std::map<std::string, Job> jobs;
    uint64_t counter = 0;
    double lastHeard = 0, lastPing = 0, openedAt = 0;
    bool connected = false;
    double rateBuilt = 0;
    struct Impl;
    std::unique_ptr<Impl> impl;  // the ZeroMQ context and socket
    std::thread thread;
};
