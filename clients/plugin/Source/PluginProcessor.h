#pragma once

#include "DaemonWorker.h"
#include "Shared.h"

#include <juce_audio_processors/juce_audio_processors.h>

// A trigger this many beats or less after a bar line is taken as meant for that line (1/32 beat: 15.6 ms at
// 120 BPM): a host may deliver a note placed on the line a few samples late (DawDreamer does,
// tests/test_plugin.py), and a player's hit just after the downbeat means that downbeat.
constexpr double kLateGraceBeats = 1.0 / 32.0;

class MagnetProcessor : public juce::AudioProcessor
{
public:
    MagnetProcessor();
    ~MagnetProcessor() override;

    void prepareToPlay (double sampleRate, int samplesPerBlock) override;
    void releaseResources() override {}
    bool isBusesLayoutSupported (const BusesLayout&) const override;
    void processBlock (juce::AudioBuffer<float>&, juce::MidiBuffer&) override;
    using AudioProcessor::processBlock;

    juce::AudioProcessorEditor* createEditor() override;
    bool hasEditor() const override { return true; }

    const juce::String getName() const override { return "MagnetRT"; }
    bool acceptsMidi() const override { return true; }
    bool producesMidi() const override { return false; }
    double getTailLengthSeconds() const override { return 0.0; }
    int getNumPrograms() override { return 1; }
    int getCurrentProgram() override { return 0; }
    void setCurrentProgram (int) override {}
    const juce::String getProgramName (int) override { return {}; }
    void changeProgramName (int, const juce::String&) override {}

    void getStateInformation (juce::MemoryBlock&) override;
    void setStateInformation (const void*, int) override;

    void post (DaemonWorker::Action a) { worker->post (a); }
    void play (int s) { playRequest.store (s); }
    void stop() { stopRequest.store (true); }

    Settings settings;
    Report report;
    TakeSlots takes;
    HostTime host;
    std::atomic<int> playingSlot { -1 };  // for the editor

private:
    void trigger (int slot, int offset, const juce::Optional<juce::AudioPlayHead::PositionInfo>& pos);
    void pollButtons() noexcept;

    std::atomic<int> playRequest { -1 };
    std::atomic<bool> stopRequest { false };
    std::atomic<bool> resetRequest { false };
    std::atomic<uint32_t> noteGenerate { 0 };
    std::atomic<uint32_t> buttonPresses { 0 };  // bit k: DaemonWorker::Action k pressed from the host
    // The musician's buttons as automatable host parameters (Generate, Variations, Loop, Inpaint, Cancel):
    // a press is the value rising from off to on; owned by the AudioProcessor.
    std::array<juce::AudioParameterBool*, 5> buttons {};
    std::array<bool, 5> buttonDown {};  // audio thread only: each button's value at the last block
    std::unique_ptr<DaemonWorker> worker;

    // Audio thread only.
    double rate = 44100.0;
    int slot = -1;
    int64_t pos = 0, loopLen = 0;
    int pendingSlot = -1;
    int64_t pendingIn = -1;        // samples from this block's start to the pending start
    int64_t pendingLoopLen = 0;
    int64_t pendingPos = 0;        // where in the take the pending start begins (a trigger a little past a line)

    JUCE_DECLARE_NON_COPYABLE_WITH_LEAK_DETECTOR (MagnetProcessor)
};
