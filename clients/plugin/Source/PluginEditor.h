#pragma once

#include "PluginProcessor.h"

#include <juce_gui_basics/juce_gui_basics.h>

// The musician's surface. Reads the daemon thread's Report on a timer; writes Settings under their lock.
class MagnetEditor : public juce::AudioProcessorEditor, private juce::Timer
{
public:
    explicit MagnetEditor (MagnetProcessor&);
    ~MagnetEditor() override;
    void paint (juce::Graphics&) override;
    void resized() override;

private:
    struct Light : juce::Component
    {
        int state = 0;
        void paint (juce::Graphics& g) override
        {
            g.setColour (state == 1 ? juce::Colours::limegreen : state == 2 ? juce::Colours::red : juce::Colours::grey);
            g.fillEllipse (getLocalBounds().toFloat().reduced (2));
        }
    };
    // Drag the selected slot's WAV into the DAW's timeline.
    struct DragTake : juce::Label
    {
        std::function<juce::String()> path;
        void mouseDrag (const juce::MouseEvent&) override
        {
            if (auto p = path(); p.isNotEmpty())
                juce::DragAndDropContainer::performExternalDragDropOfFiles ({ p }, false, this);
        }
    };

    void timerCallback() override;
    void store();
    void load();

    MagnetProcessor& proc;
    juce::TextEditor prompt, seed, address, inStart, inEnd;
    juce::ComboBox preset, bars, slot, variations;
    juce::ToggleButton loop { "Loop playback" };
    juce::TextButton generate { "Generate" }, vary { "Variations" }, makeLoop { "Loop" }, inpaint { "Inpaint bars" },
        cancel { "Cancel" }, play { "Play" }, stopButton { "Stop" };
    Light light;
    double progressValue = 0.0;
    juce::ProgressBar progress { progressValue };
    juce::Label status, error, labels[8];
    DragTake drag;
    juce::StringArray shownPresets;

    JUCE_DECLARE_NON_COPYABLE_WITH_LEAK_DETECTOR (MagnetEditor)
};
